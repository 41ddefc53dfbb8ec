"""A feature's page data from its values on a store: top windows, quantile samples, histogram, logit lens.

The card has the same fields as `metalens.sae.features` cards (so the static export and the
dashboard show the same thing), built from a source's `Values` without the activations in memory:
only the rows around the chosen windows are looked at.
"""

from __future__ import annotations


import numpy as np

from ..features import FeatureCard, make_card
from .sources import Source, Values


def _window(src: Source, vals: Values, row: int, decode, left: int, right: int, lookup) -> dict:
    tok = src.tokens
    lo, hi = max(0, row - left), min(len(tok), row + right + 1)
    rows = [r for r in range(lo, hi) if tok.text_idx[r] == tok.text_idx[row]]
    values = [round(lookup(r), 4) for r in rows]
    return dict(tokens=[decode(int(tok.token_ids[r])) for r in rows], values=values, target=rows.index(row),
                value=round(lookup(row), 4), text=int(tok.text_idx[row]), position=int(tok.positions[row]), row=row)


def build_card(src: Source, i: int, decode, logit_lens=None, n_top: int = 12, n_quantiles: int = 4,
               per_quantile: int = 3, window: tuple[int, int] = (12, 4), seed: int = 0) -> FeatureCard:
    """Card for feature i of a source; `decode(token_id) -> str`; `logit_lens(direction) -> LogitLens` or None."""
    vals = src.values(i)
    rows, v = vals.rows, vals.values
    if len(rows) == vals.n_rows:  # dense: index by row
        lookup = lambda r: float(v[r])  # noqa: E731
    else:
        order = np.argsort(rows)
        srows, sv = rows[order], v[order]

        def lookup(r: int) -> float:
            j = np.searchsorted(srows, r)
            return float(sv[j]) if j < len(srows) and srows[j] == r else 0.0

    left, right = window
    direction = src.direction(i)
    lens = logit_lens(direction) if logit_lens is not None and direction is not None else None
    return make_card(src.feature_id(i), v, lambda r: _window(src, vals, r, decode, left, right, lookup),
                     n_rows=vals.n_rows, rows=rows, index=i, site=src.site, lens=lens, n_top=n_top,
                     n_quantiles=n_quantiles, per_quantile=per_quantile, seed=seed, source=src.key)


def shade(tokens: list[str], values: list[float], vmax: float) -> list[dict]:
    """[{text, value, alpha}] for a template: alpha in [0, 1] from value / vmax (negative values: 0)."""
    out = []
    for t, x in zip(tokens, values):
        a = 0.0 if vmax <= 0 else max(0.0, min(1.0, x / vmax))
        out.append(dict(text=t.replace("\n", "⏎"), value=x, alpha=round(a, 2)))
    return out
