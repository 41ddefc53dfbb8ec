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
