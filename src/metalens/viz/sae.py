"""SAE plots: the FVU / L0 frontier across a sweep of k, and a latent's activation histogram."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..io import atomic_write_bytes  # noqa: E402


def plot_frontier(points: Sequence[dict], path: str | Path, title: str = "SAE frontier") -> Path:
    """points: [{k, l0, fvu, (label)}]; one marker per SAE, lines joining each label's points in L0 order."""
    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    groups: dict[str, list[dict]] = {}
    for p in points:
        groups.setdefault(str(p.get("label", "metalens")), []).append(p)
    for label, ps in groups.items():
        ps = sorted(ps, key=lambda p: p["l0"])
        ax.plot([p["l0"] for p in ps], [p["fvu"] for p in ps], "o-", label=label)
        for p in ps:
            ax.annotate(f"k={p['k']}", (p["l0"], p["fvu"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("L0 (active latents per token)")
    ax.set_ylabel("FVU (lower is better)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if len(groups) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)
