"""Feature: anything that maps activations at one site to one number per token.

A neuron, an SAE latent, a probe or a steering direction are all Features. Autointerp, steering
and the dashboard take Features and never care where they came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class Feature:
    site: str
    """where it reads, e.g. "resid.15" or "neurons.3" """
    id: str
    """unique name, e.g. "neurons.3:77", "resid.15/sae-k32:1203", "resid.15/dir:refusal" """
    encode: Callable[[torch.Tensor], torch.Tensor] = field(repr=False)
    """acts [n, d] -> values [n]"""
    direction: torch.Tensor | None = field(default=None, repr=False)
    """[d]: the write direction (decoder row / the vector itself), for steering and logit effects"""

    def __call__(self, acts: torch.Tensor) -> torch.Tensor:
        if acts.ndim != 2:
            raise ValueError(f"Feature {self.id} takes acts [n, d]; got shape {tuple(acts.shape)}")
        return self.encode(acts)

    @staticmethod
    def neuron(site: str, index: int) -> "Feature":
        """One coordinate of a site (usually neurons.L)."""
        return Feature(site, f"{site}:{index}", lambda a: a[:, index])

    @staticmethod
    def from_direction(site: str, vector: torch.Tensor, name: str, bias: float = 0.0) -> "Feature":
        """Projection onto a direction (not normalised: a probe's weight vector works as is)."""
        v = vector.detach().float()
        return Feature(site, f"{site}/dir:{name}", lambda a: a.float() @ v.to(a.device) + bias, direction=v)


@dataclass
class Explanation:
    feature: str
    """Feature.id"""
    text: str
    """the natural-language explanation"""
    scores: dict[str, float] = field(default_factory=dict)
    """e.g. {"simulation/test": 0.61, "detection/test": 0.83}"""
    run_id: int | None = None
    """the results-database run that produced it"""


@dataclass(frozen=True)
class FeatureCard:
    """What a feature's page shows (static pages, the dashboard, Neuronpedia export)."""

    id: str
    """Feature.id"""
    index: int | None
    """its index at the site or in the dictionary, where it has one"""
    site: str
    """where it reads"""
    rows: int
    """tokens it was read on"""
    frac_nonzero: float
    """share of those tokens where it is positive"""
    max_act: float
    """largest value"""
    min_act: float
    """smallest value"""
    top: list = field(default_factory=list)
    """the top windows, strongest first: {tokens, values, target, value, text, position, ...}"""
    quantiles: list = field(default_factory=list)
    """activation intervals (0, max] in equal steps: {lo, hi, count, examples: [window]}"""
    hist: dict | None = None
    """histogram of the non-zero values: {counts, edges}"""
    pos_logits: list = field(default_factory=list)
    """logit lens of its direction: [(token, logit)] promoted"""
    neg_logits: list = field(default_factory=list)
    """[(token, logit)] suppressed"""
    source: str | None = None
    """the store or dictionary it was read from (the dashboard's key)"""


def make_card(fid: str, values, window_of: Callable[[int], dict], n_rows: int | None = None, rows=None,
              index: int | None = None, site: str = "", lens=None, n_top: int = 10, n_quantiles: int = 4,
              per_quantile: int = 3, seed: int = 0, source: str | None = None) -> FeatureCard:
    """A card from a feature's values: dense `values` [n] over all rows, or sparse `values` at `rows` out of
    `n_rows`. `window_of(row)` gives the context window around a row; `lens` a LogitLens (or None)."""
    import random

    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    rows = np.arange(len(v)) if rows is None else np.asarray(rows)
    n_rows = len(v) if n_rows is None else n_rows
    pos = v > 0
    max_act = float(v.max()) if len(v) else 0.0
    top, quantiles, hist = [], [], None
    if pos.any():
        k = min(n_top, int(pos.sum()))
        best = np.argpartition(-v, k - 1)[:k]
        top = [window_of(int(rows[j])) for j in best[np.argsort(-v[best], kind="stable")]]
        rng = random.Random(seed)
        edges = np.linspace(0, max_act, n_quantiles + 1).tolist()
        for lo, hi in zip(edges[:-1], edges[1:]):
            inside = np.nonzero(pos & (v > lo) & (v <= hi))[0].tolist()
            pick = rng.sample(inside, min(per_quantile, len(inside)))
            quantiles.append(dict(lo=lo, hi=hi, count=len(inside), examples=[window_of(int(rows[j])) for j in pick]))
        counts, bin_edges = np.histogram(v[v != 0], bins=30)
        hist = dict(counts=counts.tolist(), edges=bin_edges.tolist())
    return FeatureCard(fid, index, site, n_rows, float(pos.sum()) / max(1, n_rows), max_act,
                       float(v.min()) if len(v) else 0.0, top, quantiles, hist,
                       list(lens.promoted) if lens is not None else [], list(lens.suppressed) if lens is not None else [],
                       source)
