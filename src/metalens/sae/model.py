"""Sparse autoencoders: TopK (default) and BatchTopK (JumpReLU at inference).

    sae = Sae(SaeConfig(d_in=576, width=4608, k=32))
    out = sae(x)                       # x [n, d_in] -> SaeOutput(recon, top_acts, top_idx, fvu, aux_loss)
    latents = sae.encode(x)            # [n, width] dense, for features and steering
    x_hat = sae.decode(latents)        # [n, d_in]

Encode: pre = relu((x - b_dec) @ W_enc + b_enc); keep the k largest per row (TopK) or the
k * n largest in the batch (BatchTopK; at inference keep pre > threshold, a JumpReLU whose
threshold is the running mean of the smallest kept activation during training).
Decode: sum of kept acts times unit-norm decoder rows, plus b_dec.

Training is sparse end to end: the k kept latents of each row are found without autograd, then
their values are recomputed by `_gather_pre` whose backward touches only the kept columns of
W_enc, and the decoder is an embedding_bag over the kept rows of W_dec. No [n, width] gradient
is ever built. Weights use SAELens's names and layouts (W_enc [d_in, width], W_dec [width, d_in]).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..sparse import batch_topk_cutoff, remove_parallel_grad_, unit_rows_, update_threshold_

KINDS = ("topk", "batchtopk")


@dataclass(frozen=True)
class SaeConfig:
    d_in: int
    """width of the activations it reads"""
    width: int
    """number of latents (dictionary size)"""
    k: int = 32
    """latents kept per row (TopK) or on average per row (BatchTopK)"""
    kind: Literal["topk", "batchtopk"] = "topk"
    """topk: k latents per row; batchtopk: k x rows per batch (a JumpReLU threshold at inference)"""
    site: str = ""
    """where it reads, e.g. "resid.15" (informational)"""
    model: str = ""
    """model name it was trained on (informational)"""
    aux_k: int = 0
    """latents the AuxK loss uses to model the residual from dead latents; 0 = d_in // 2"""
    input_scale: float = 1.0
    """training inputs were multiplied by this (sqrt(d_in) / mean norm); folded out on save"""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"SAE kind {self.kind!r} is not one of {KINDS}")
        if not 0 < self.k <= self.width:
            raise ValueError(f"k={self.k} must be in 1..width ({self.width})")
        if self.d_in <= 0 or self.width <= 0:
            raise ValueError(f"d_in and width must be positive; got d_in={self.d_in}, width={self.width}")


class SaeOutput(NamedTuple):
    recon: torch.Tensor
    """[n, d_in] reconstruction"""
    top_acts: torch.Tensor
    """[n, kk] values of the kept latents (0 where padded; BatchTopK rows keep different counts)"""
    top_idx: torch.Tensor
    """[n, kk] indices of the kept latents"""
    fvu: torch.Tensor
    """scalar: sum |x - recon|^2 / sum |x - mean_batch(x)|^2 over the batch"""
    aux_loss: torch.Tensor
    """scalar AuxK loss (0 when no latent is dead)"""


def check_rows(x: torch.Tensor, d_in: int, who: str = "SAE") -> None:
    if x.ndim != 2:
        raise ValueError(
            f"{who} takes activations [n, d] (tokens as rows); got shape {tuple(x.shape)}. "
            "Flatten [batch, seq, d] first, e.g. x.reshape(-1, x.shape[-1]), dropping padding rows."
        )
    if x.shape[1] != d_in:
        raise ValueError(f"{who} expects width {d_in}; got activations of width {x.shape[1]}")


class _GatherPre(torch.autograd.Function):
    """vals [n, kk] = relu((x @ W_enc + b_enc)[rows, idx]); backward only into the kept columns."""

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, idx, vals):
        ctx.save_for_backward(x, idx, vals)
        ctx.shape = W_enc.shape
        return vals.clone()

    @staticmethod
    def backward(ctx, g):  # g [n, kk]
        x, idx, vals = ctx.saved_tensors
        g = (g * (vals > 0)).to(x.dtype)  # relu
        flat_idx = idx.reshape(-1)
        grad_b = torch.zeros(ctx.shape[1], dtype=g.dtype, device=g.device).index_add_(0, flat_idx, g.reshape(-1))
        # W_enc.grad [d, width] = x^T @ G with G [n, width] sparse (kk per row): as G^T @ x, one sparse mm
        rows = torch.arange(x.shape[0], device=x.device).repeat_interleave(idx.shape[1])
        gt = torch.sparse_coo_tensor(torch.stack([flat_idx, rows]), g.reshape(-1), (ctx.shape[1], x.shape[0]), check_invariants=False)
        grad_w = torch.sparse.mm(gt, x).T  # [d, width]
        return None, grad_w, grad_b, None, None


def _decode_sparse(W_dec: torch.Tensor, idx: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    """sum_j acts[:, j] * W_dec[idx[:, j]] -> [n, d] without a dense [n, width] product."""
    return F.embedding_bag(idx, W_dec, per_sample_weights=acts.to(W_dec.dtype), mode="sum")


class Sae(nn.Module):
    def __init__(self, cfg: SaeConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        g = torch.Generator().manual_seed(seed)
        W_dec = torch.randn(cfg.width, cfg.d_in, generator=g)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)  # [width, d_in], unit rows
        self.W_enc = nn.Parameter(W_dec.T.clone().contiguous())  # [d_in, width]: the decoder transpose
        self.b_enc = nn.Parameter(torch.zeros(cfg.width))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        self.register_buffer("threshold", torch.tensor(-1.0))  # BatchTopK inference threshold; <0 = not yet set

    # ---- encoding ----------------------------------------------------------------------------
    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """relu((x - b_dec) @ W_enc + b_enc): [n, width]."""
        check_rows(x, self.cfg.d_in)
        return F.relu(torch.addmm(self.b_enc, x.to(self.W_enc.dtype) - self.b_dec, self.W_enc))

    def select(self, pre: torch.Tensor, batch: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(vals, idx) [n, kk] of the kept latents; BatchTopK pads rows with zero-valued entries."""
        k = self.cfg.k
        if not batch:
            vals, idx = pre.topk(k, dim=1, sorted=False)
            return vals, idx
        cutoff = batch_topk_cutoff(pre, k)  # k * n kept in the batch
        keep = (pre >= cutoff) & (pre > 0)
        kk = max(1, int(keep.sum(1).max()))
        vals, idx = pre.topk(kk, dim=1, sorted=False)
        return vals * (vals >= cutoff), idx

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Dense latents [n, width]: TopK per row, or for BatchTopK pre * (pre > threshold) (JumpReLU)."""
        pre = self.pre_acts(x)
        if self.cfg.kind == "batchtopk" and bool((self.threshold >= 0).all()):
            return pre * (pre > self.threshold)
        vals, idx = self.select(pre, batch=self.cfg.kind == "batchtopk")
        return torch.zeros_like(pre).scatter_(1, idx, vals)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[n, width] -> [n, d_in]."""
        return latents.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    # ---- training forward --------------------------------------------------------------------
    def forward(self, x: torch.Tensor, dead: torch.Tensor | None = None) -> SaeOutput:
        """Training pass on x [n, d_in]; `dead` [width] bool marks dead latents for the AuxK loss."""
        check_rows(x, self.cfg.d_in)
        x = x.to(self.W_enc.dtype)
        with torch.no_grad():  # pre-activations before the relu: topk picks the same latents, clamped below
            pre = torch.addmm(self.b_enc, x - self.b_dec, self.W_enc)  # [n, width]
            vals, idx = self.select(pre, batch=self.cfg.kind == "batchtopk" and self.training)
            vals = vals.clamp_min(0)
        vals = _GatherPre.apply(x - self.b_dec.detach(), self.W_enc, self.b_enc, idx, vals)
        # b_dec's gradient through the encoder is dropped (as in sparsify); it learns through the decoder
        recon = _decode_sparse(self.W_dec, idx, vals) + self.b_dec  # [n, d_in]
        err = x - recon
        total = (x - x.mean(0)).pow(2).sum()
        fvu = err.pow(2).sum() / total
        aux = torch.zeros((), device=x.device)
        if dead is not None and dead.any():
            aux_k = min(self.cfg.aux_k or self.cfg.d_in // 2, int(dead.sum()))
            with torch.no_grad():  # top aux_k among the dead columns only (no [n, width] copy)
                dead_idx = dead.nonzero()[:, 0]  # [n_dead]
                a_vals, a_pos = pre[:, dead_idx].topk(aux_k, dim=1, sorted=False)
                a_vals, a_idx = a_vals.clamp_min(0), dead_idx[a_pos]
            a_vals = _GatherPre.apply(x - self.b_dec.detach(), self.W_enc, self.b_enc, a_idx, a_vals)
            aux_recon = _decode_sparse(self.W_dec, a_idx, a_vals)
            aux = (err.detach() - aux_recon).pow(2).sum() / total  # dead latents model what the live ones miss
            aux = torch.nan_to_num(aux, nan=0.0)
        return SaeOutput(recon, vals, idx, fvu, aux)

    # ---- decoder constraint ------------------------------------------------------------------
    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Project out the component of each decoder row's gradient along the row (keeps |row| = 1 to 1st order)."""
        remove_parallel_grad_(self.W_dec)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        unit_rows_(self.W_dec)

    @torch.no_grad()
    def update_threshold(self, vals: torch.Tensor, momentum: float = 0.99) -> None:
        """BatchTopK: running mean of the smallest kept activation, used as the JumpReLU threshold."""
        update_threshold_(self.threshold, vals, momentum)

    # ---- data-dependent init -----------------------------------------------------------------
    @torch.no_grad()
    def init_b_dec(self, x: torch.Tensor, method: str = "median") -> None:
        """b_dec from a sample [n, d_in]: geometric median (Weiszfeld), mean, or zero."""
        check_rows(x, self.cfg.d_in)
        if method == "zero":
            return
        if method == "mean":
            self.b_dec.copy_(x.float().mean(0))
        elif method == "median":
            self.b_dec.copy_(geometric_median(x.float()))
        else:
            raise ValueError(f"b_dec init {method!r} is not one of median, mean, zero")


def geometric_median(x: torch.Tensor, iters: int = 50, eps: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of Euclidean distances to the rows of x [n, d]."""
    y = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - y).norm(dim=1).clamp_min(eps)  # [n]
        y_new = (w[:, None] * x).sum(0) / w.sum()
        if (y_new - y).norm() < eps * (1 + y.norm()):
            return y_new
        y = y_new
    return y
