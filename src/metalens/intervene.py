"""Write activations: context managers that edit a site during every forward pass inside them.

    with add(subject, "resid.10", vector, scale=4.0, positions=slice(5, None)):
        subject.generate("Tell me a story")

They nest (inner edits see the outer edits' result) and always remove their hooks on exit,
exceptions included. Steering, ablation and oracle injection are all built on `edit`.

`positions` picks which tokens are edited:
  None          every token
  int p         absolute token positions >= p ("from p on"); counted across a generate() call
  slice         positions within the current forward pass's sequence dimension
  Tensor bool   [batch, seq] mask for exactly one forward pass of that shape (e.g. oracle placeholders)
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from .models import Subject
from .sites import hook_site

EditFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (act [n, d], mask rows) -> new act [n, d]


class _Positions:
    """Turns a `positions` spec into a [batch, seq] mask for each forward pass."""

    def __init__(self, positions):
        self.spec = positions
        self.offset = 0  # absolute position of the next token, for int specs under a KV cache

    def mask(self, act: torch.Tensor) -> torch.Tensor:
        b, s = act.shape[:2]
        spec = self.spec
        if spec is None:
            return torch.ones(b, s, dtype=torch.bool, device=act.device)
        if isinstance(spec, torch.Tensor):
            if spec.shape != (b, s):
                raise ValueError(f"positions mask has shape {tuple(spec.shape)} but the activation is [{b}, {s}, d]")
            return spec.to(act.device, torch.bool)
        if isinstance(spec, slice):
            m = torch.zeros(b, s, dtype=torch.bool, device=act.device)
            m[:, spec] = True
            return m
        if isinstance(spec, int):
            if s > 1:  # a new prompt (prefill) starts counting again
                self.offset = 0
            pos = self.offset + torch.arange(s, device=act.device)  # [seq]
            self.offset += s
            return (pos >= spec).unsqueeze(0).expand(b, s)
        raise TypeError(f"positions must be None, an int, a slice or a [batch, seq] bool tensor; got {type(spec).__name__}")


@contextmanager
def edit(subject: Subject, site: str, fn: Callable[[torch.Tensor], torch.Tensor], positions=None) -> Iterator[None]:
    """Replace the site's activation at the chosen positions by fn(act_rows [n, d]) -> [n, d]."""
    parsed = subject.site(site)
    pos = _Positions(positions)

    def hook(act: torch.Tensor):  # [batch, seq, d]
        mask = pos.mask(act)  # [batch, seq]
        if not mask.any():
            return None
        out = act.clone()
        out[mask] = fn(act[mask]).to(act.dtype)
        return out

    handle = hook_site(subject.model, parsed, hook)
    try:
        yield
    finally:
        handle.remove()


def _vec(subject: Subject, site: str, v: torch.Tensor | float, name: str) -> torch.Tensor:
    v = torch.as_tensor(v, dtype=subject.dtype, device=subject.device)
    width = subject.width(site)
    if v.ndim == 0:
        return v
    if v.shape[-1] != width:
        raise ValueError(f"{name} has width {v.shape[-1]} but site {site} has width {width}")
    return v


def add(subject: Subject, site: str, vector: torch.Tensor, scale: float = 1.0, positions=None):
    """act += scale * vector. vector is [d], or [n, d] matching the n selected positions in order."""
    v = _vec(subject, site, vector, "vector")
    return edit(subject, site, lambda a: a + scale * v, positions)


def replace(subject: Subject, site: str, value: torch.Tensor | float, positions=None):
    """act = value. value is a scalar, [d], or [n, d] matching the n selected positions in order."""
    v = _vec(subject, site, value, "value")
    return edit(subject, site, lambda a: torch.zeros_like(a) + v, positions)


def clamp(subject: Subject, site: str, direction: torch.Tensor, value: float, positions=None):
    """Set the component along `direction` to `value`: act + (value - act.u) u, u = direction/|direction|."""
    u = _vec(subject, site, direction, "direction")
    u = u / u.norm()
    return edit(subject, site, lambda a: a + (value - a @ u)[:, None] * u, positions)


def ablate(subject: Subject, site: str, direction: torch.Tensor | None = None, mean: torch.Tensor | None = None, positions=None):
    """Zero the site (or set it to `mean`), or, given a direction, project that direction out."""
    if direction is not None:
        return clamp(subject, site, direction, 0.0, positions)
    return replace(subject, site, 0.0 if mean is None else mean, positions)
