"""Static HTML feature pages: one self-contained file per feature plus an index, opened from disk.

Each page shows the feature's activation density, histogram (inline SVG), the tokens its
direction promotes and suppresses, the top-activating contexts and a few contexts from each
activation interval, every token shaded by the feature's value on it (hover for the number).
No JavaScript, no network: the files work offline and can be attached to a report.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Sequence

from ..io import atomic_write_bytes

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1000px;color:#222}
h1{font-size:20px} h2{font-size:16px;margin-top:22px;border-bottom:1px solid #ddd}
.ctx{font-family:ui-monospace,monospace;font-size:12.5px;white-space:pre-wrap;margin:3px 0;padding:3px 6px;
     background:#fafafa;border-left:3px solid #eee}
.tok{border-radius:2px} .tgt{outline:1.5px solid #c40}
.v{color:#888;font-size:11px;margin-right:6px}
table{border-collapse:collapse} td{padding:1px 8px;font-family:ui-monospace,monospace;font-size:12.5px}
.pos{color:#05a} .neg{color:#b30} .row{display:flex;gap:40px;flex-wrap:wrap} a{color:#05a}
"""


def _tok(t: str, v: float, vmax: float, target: bool) -> str:
    a = 0.0 if vmax <= 0 else max(0.0, min(1.0, v / vmax))
    cls = "tok tgt" if target else "tok"
    shown = html.escape(t).replace("\n", "⏎")
    return f'<span class="{cls}" style="background:rgba(255,140,0,{a:.2f})" title="{v:.3f}">{shown}</span>'


def _context(ex: dict, vmax: float) -> str:
    toks = "".join(_tok(t, v, vmax, i == ex["target"]) for i, (t, v) in enumerate(zip(ex["tokens"], ex["values"])))
    return f'<div class="ctx"><span class="v">{ex["value"]:.2f}</span>{toks}</div>'


def _hist_svg(hist: dict | None, w: int = 420, h: int = 120) -> str:
    if not hist or not hist["counts"]:
        return "<p>(never active on these tokens)</p>"
    counts, edges = hist["counts"], hist["edges"]
    top = max(counts) or 1
    bw = w / len(counts)
    bars = "".join(
        f'<rect x="{i * bw:.1f}" y="{h - 18 - c / top * (h - 24):.1f}" width="{bw - 1:.1f}" '
        f'height="{c / top * (h - 24):.1f}" fill="#f39c12"><title>{edges[i]:.2f}..{edges[i + 1]:.2f}: {int(c)}</title></rect>'
        for i, c in enumerate(counts))
    axis = (f'<text x="0" y="{h - 4}" font-size="10">{edges[0]:.2f}</text>'
            f'<text x="{w - 40}" y="{h - 4}" font-size="10">{edges[-1]:.2f}</text>')
    return f'<svg width="{w}" height="{h}" role="img" aria-label="activation histogram">{bars}{axis}</svg>'


def _logits(rows: list, cls: str) -> str:
    return "<table>" + "".join(f'<tr><td class="{cls}">{html.escape(repr(t))}</td><td>{v:+.3f}</td></tr>'
                               for t, v in rows) + "</table>"


def feature_page(card: dict, title: str = "") -> str:
    vmax = card.max_act
    parts = [f"<h1>{html.escape(card.id)}</h1>",
             f"<p>{html.escape(title)}<br>active on {card.frac_nonzero:.3%} of {card.rows} tokens; "
             f"max activation {vmax:.3f}. <a href='index.html'>all features</a></p>",
             '<div class="row"><div><h2>Activation histogram (non-zero)</h2>', _hist_svg(card.hist), "</div>"]
    if card.pos_logits:
        parts += ["<div><h2>Promotes</h2>", _logits(card.pos_logits, "pos"), "</div>",
                  "<div><h2>Suppresses</h2>", _logits(card.neg_logits, "neg"), "</div>"]
    parts.append("</div><h2>Top activations</h2>")
    parts += [_context(ex, vmax) for ex in card.top] or ["<p>(none)</p>"]
    for q in reversed(card.quantiles):
        parts.append(f"<h2>Interval {q['lo']:.2f} – {q['hi']:.2f} ({q['count']} tokens)</h2>")
        parts += [_context(ex, vmax) for ex in q["examples"]] or ["<p>(none)</p>"]
    return f"<!doctype html><meta charset='utf-8'><title>{html.escape(card.id)}</title><style>{CSS}</style>" + "".join(parts)


def _file(card: dict) -> str:
    idx = card.index
    return f"feature_{idx}.html" if idx is not None else "feature_" + re.sub(r"[^A-Za-z0-9]+", "_", card.id) + ".html"


def write_pages(cards: Sequence[dict], out: str | Path, title: str = "metalens features") -> Path:
    """feature_<i>.html per card and index.html listing them (density, max, top tokens); returns the index path."""
    out = Path(out)
    rows = []
    for c in cards:
        atomic_write_bytes(out / _file(c), feature_page(c, title).encode())
        top_tokens = ", ".join(repr(ex["tokens"][ex["target"]]) for ex in c.top[:5])
        rows.append(f"<tr><td><a href='{_file(c)}'>{html.escape(c.id)}</a></td><td>{c.frac_nonzero:.3%}</td>"
                    f"<td>{c.max_act:.2f}</td><td>{html.escape(top_tokens)}</td></tr>")
    index = (f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}</style>"
             f"<h1>{html.escape(title)}</h1><table><tr><th>feature</th><th>density</th><th>max</th>"
             f"<th>top tokens</th></tr>{''.join(rows)}</table>")
    atomic_write_bytes(out / "index.html", index.encode())
    return out / "index.html"
