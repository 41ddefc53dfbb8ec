"""A feature's page data from its values on a store: top windows, quantile samples, histogram, logit lens.

The card has the same fields as `metalens.sae.features` cards (so the static export and the
dashboard show the same thing), built from a source's `Values` without the activations in memory:
only the rows around the chosen windows are looked at.
"""

from __future__ import annotations

import random

import numpy as np

from .sources import Source, Values


def _window(src: Source, vals: Values, row: int, decode, left: int, right: int, lookup) -> dict:
    tok = src.tokens
    lo, hi = max(0, row - left), min(len(tok), row + right + 1)
    rows = [r for r in range(lo, hi) if tok.text_idx[r] == tok.text_idx[row]]
    values = [round(lookup(r), 4) for r in rows]
    return dict(tokens=[decode(int(tok.token_ids[r])) for r in rows], values=values, target=rows.index(row),
                value=round(lookup(row), 4), text=int(tok.text_idx[row]), position=int(tok.positions[row]), row=row)


def build_card(src: Source, i: int, decode, logit_lens=None, n_top: int = 12, n_quantiles: int = 4,
               per_quantile: int = 3, window: tuple[int, int] = (12, 4), seed: int = 0) -> dict:
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
    pos = v > 0
    card = dict(id=src.feature_id(i), index=i, site=src.site, source=src.key, rows=vals.n_rows,
                frac_nonzero=float(pos.sum()) / max(1, vals.n_rows), max_act=float(v.max()) if len(v) else 0.0,
                min_act=float(v.min()) if len(v) else 0.0, top=[], quantiles=[], hist=None, pos_logits=[],
                neg_logits=[])
    if pos.any():
        k = min(n_top, int(pos.sum()))
        top = np.argpartition(-v, k - 1)[:k]
        top = top[np.argsort(-v[top])]
        card["top"] = [_window(src, vals, int(rows[j]), decode, left, right, lookup) for j in top]
        rng = random.Random(seed)
        edges = np.linspace(0, card["max_act"], n_quantiles + 1).tolist()
        for lo, hi in zip(edges[:-1], edges[1:]):
            inside = np.nonzero(pos & (v > lo) & (v <= hi))[0].tolist()
            pick = rng.sample(inside, min(per_quantile, len(inside)))
            card["quantiles"].append(dict(lo=lo, hi=hi, count=len(inside), examples=[
                _window(src, vals, int(rows[j]), decode, left, right, lookup) for j in pick]))
        counts, bin_edges = np.histogram(v[v != 0], bins=30)
        card["hist"] = dict(counts=counts.tolist(), edges=bin_edges.tolist())
    direction = src.direction(i)
    if logit_lens is not None and direction is not None:
        lens = logit_lens(direction)
        card["pos_logits"], card["neg_logits"] = lens.promoted, lens.suppressed
    return card


def shade(tokens: list[str], values: list[float], vmax: float) -> list[dict]:
    """[{text, value, alpha}] for a template: alpha in [0, 1] from value / vmax (negative values: 0)."""
    out = []
    for t, x in zip(tokens, values):
        a = 0.0 if vmax <= 0 else max(0.0, min(1.0, x / vmax))
        out.append(dict(text=t.replace("\n", "⏎"), value=x, alpha=round(a, 2)))
    return out
