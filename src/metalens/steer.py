"""Steering: clamp a dictionary feature during generation, or add a contrastive steering vector.

    with clamp_feature(s, "resid.15", sae, latent=1203, value=20.0):      # keeps the SAE error term
        print(s.generate("Tell me about your day."))

    vec = contrastive_vector(s, "resid.10", [("I love it", "I hate it"), ...], method="mean")
    with steer(s, vec, multiplier=4.0, positions=0):
        print(s.generate("Tell me about your day."))

Feature clamping follows Scaling Monosemanticity: the activation x becomes
decode(latents with latent i set to v) + (x - decode(latents)), so only latent i's contribution
changes and whatever the SAE fails to reconstruct is kept. Any dictionary with
encode([n, d]) -> [n, width] and decode([n, width]) -> [n, d] works (ours, or a wrapped SAELens SAE).

Contrastive vectors (CAA; repeng): one activation per prompt at the last token ("last") or
averaged over its tokens ("mean"), the pairwise differences pos - neg, then either their mean
("mean") or their first principal direction ("pca": the top right-singular vector of the stacked
differences, uncentered, signed to agree with the mean difference and scaled to its projection).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, NamedTuple, Protocol, Sequence

import torch

from .capture import capture
from .errors import DataError
from .intervene import add, edit
from .models import Subject


class Dictionary(Protocol):
    def encode(self, x: torch.Tensor) -> torch.Tensor: ...
    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...


class SteeringVector(NamedTuple):
    site: str
    """where it is added, e.g. "resid.10" """
    vector: torch.Tensor
    """[d] the direction, in activation units (multiplier 1 = one mean difference)"""
    method: str
    """mean | pca"""
    n_pairs: int
    """number of (positive, negative) prompt pairs it came from"""
    agreement: float
    """share of pairs whose own difference has a positive dot product with the vector"""


@contextmanager
def clamp_feature(
    subject: Subject, site: str, sae: Dictionary, latent: int, value: float, positions=None, keep_error: bool = True,
) -> Iterator[None]:
    """Set one dictionary latent to `value` at `site` (all tokens, or `positions` as in intervene.edit).

    A dictionary that names its site and input width (`sae.cfg.site`, `sae.cfg.d_in`) must match `site`.
    """
    site = str(subject.site(site))
    cfg = getattr(sae, "cfg", None)
    own = str(subject.site(cfg.site)) if getattr(cfg, "site", "") else None
    if own is not None and own != site:
        raise DataError(f"the SAE reads {own} but clamping was asked at {site}; clamp at the SAE's own site")
    if getattr(cfg, "d_in", None) not in (None, subject.width(site)):
        raise DataError(f"the SAE reads width {cfg.d_in} but {site} of {subject.name} has width {subject.width(site)}: "
                        "it belongs to another model")

    @torch.no_grad()
    def fn(a: torch.Tensor) -> torch.Tensor:  # [n, d]
        x = a.float()
        lat = sae.encode(x)  # [n, width]
        if not 0 <= latent < lat.shape[1]:
            raise IndexError(f"latent {latent} is out of range for a dictionary of width {lat.shape[1]}")
        err = x - sae.decode(lat) if keep_error else 0.0
        lat = lat.clone()
        lat[:, latent] = value
        return sae.decode(lat) + err

    with edit(subject, site, fn, positions):
        yield


def _prompt_acts(subject: Subject, prompts: Sequence[str], site: str, reduce: str, chat: bool) -> torch.Tensor:
    texts = [subject.chat(p) for p in prompts] if chat else list(prompts)
    if reduce == "last":
        return capture(subject, texts, [site], positions="last", add_special_tokens=not chat)[site]  # [n, d]
    if reduce == "mean":
        acts = capture(subject, texts, [site], add_special_tokens=not chat)
        n = len(texts)
        sums = torch.zeros(n, acts[site].shape[1]).index_add_(0, acts.text_idx, acts[site])
        return sums / torch.bincount(acts.text_idx, minlength=n).clamp_min(1)[:, None]
    raise DataError(f"reduce must be 'last' or 'mean'; got {reduce!r}")


def contrastive_vector(
    subject: Subject, site: str, pairs: Sequence[tuple[str, str]], method: str = "mean", reduce: str = "last",
    chat: bool = False,
) -> SteeringVector:
    """A steering vector from (positive, negative) prompt pairs; see the module doc."""
    if not pairs:
        raise DataError("need at least one (positive, negative) prompt pair")
    if method not in ("mean", "pca"):
        raise DataError(f"method must be 'mean' or 'pca'; got {method!r}")
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(t, str) and t for t in pair)):
            raise DataError(f"pair {i} must be two non-empty prompts (positive, negative), got {str(pair)[:80]!r}")
    site = str(subject.site(site))
    pos = _prompt_acts(subject, [p for p, _ in pairs], site, reduce, chat)  # [n, d]
    neg = _prompt_acts(subject, [n for _, n in pairs], site, reduce, chat)  # [n, d]
    diffs = pos - neg  # [n, d]
    mean = diffs.mean(0)
    if method == "mean":
        vec = mean
    else:
        _, _, vt = torch.linalg.svd(diffs, full_matrices=False)
        u = vt[0]  # [d] unit
        u = u if u @ mean >= 0 else -u
        vec = u * (diffs @ u).mean()
    agreement = (diffs @ vec > 0).float().mean().item()
    return SteeringVector(site, vec, method, len(pairs), agreement)


def steer(subject: Subject, vector: SteeringVector, multiplier: float = 1.0, positions=None):
    """Context manager: add multiplier * vector at its site, at `positions` as in intervene.edit (None: every
    token; an int p: every position >= p, counted across generate)."""
    return add(subject, vector.site, vector.vector, scale=multiplier, positions=positions)


def compare(subject: Subject, prompts: Sequence[str], intervention, max_new_tokens: int = 40, chat: bool = True) -> list[dict]:
    """Generations with and without an intervention: `intervention` is a zero-argument callable
    returning a fresh context manager (e.g. lambda: steer(s, vec, 4.0))."""
    rows = []
    for p in prompts:
        plain = subject.generate(p, max_new_tokens=max_new_tokens, chat=chat)
        with intervention():
            steered = subject.generate(p, max_new_tokens=max_new_tokens, chat=chat)
        rows.append(dict(prompt=p, plain=plain, steered=steered))
    return rows
