"""Sparse-coding building blocks shared by the SAE and the crosscoder.

    cutoff = batch_topk_cutoff(pre, k)           # keep the k * n largest pre-activations of a batch
    update_threshold_(threshold, kept_vals)      # JumpReLU threshold for inference after BatchTopK
    remove_parallel_grad_(W_dec, dims)           # keep decoder rows unit-norm to first order ...
    unit_rows_(W_dec, dims)                      # ... and exactly, after the optimizer step
"""

from __future__ import annotations

import torch


def batch_topk_cutoff(pre: torch.Tensor, k: int) -> torch.Tensor:
    """The smallest value kept when a batch pre [n, width] keeps its k * n largest entries (scalar)."""
    return pre.flatten().topk(min(pre.numel(), k * pre.shape[0]), sorted=False).values.min()


@torch.no_grad()
def update_threshold_(threshold: torch.Tensor, vals: torch.Tensor, momentum: float = 0.99) -> None:
    """Running mean of the smallest kept (positive) activation, in place; a negative threshold is unset."""
    kept = vals[vals > 0]
    if kept.numel() == 0:
        return
    m = kept.min()
    threshold.copy_(m if threshold < 0 else momentum * threshold + (1 - momentum) * m)


@torch.no_grad()
def remove_parallel_grad_(W: torch.Tensor, dims: tuple[int, ...] = (1,)) -> None:
    """Drop the component of each row's gradient along the row (rows = dim 0; the row spans `dims`)."""
    if W.grad is None:
        return
    W.grad -= (W.grad * W).sum(dims, keepdim=True) * W


@torch.no_grad()
def unit_rows_(W: torch.Tensor) -> None:
    """Normalise each row (dim 0, spanning all other dims) to unit norm, in place."""
    W /= W.flatten(1).norm(dim=1).clamp_min(1e-8).view(-1, *([1] * (W.ndim - 1)))
