"""How good is an SAE: reconstruction metrics on activations, and the language-model view.

Reconstruction, over a fixed window of N evaluated rows x_i (tokens) with reconstructions x̂_i:
  FVU = Σ_i |x_i - x̂_i|² / Σ_i |x_i - x̄|²      x̄ = mean of the N rows (one pooled ratio over
                                                   the window, NOT the average of per-token ratios)
  explained variance = 1 - FVU
  L0 = mean over rows of the number of non-zero latents
  cosine = mean_i cos(x_i, x̂_i);   l2 ratio = mean_i |x̂_i| / |x_i|
  dead fraction = share of latents that are zero on every one of the N rows

Language model: next-token cross-entropy over the real (unpadded) tokens of some texts with
  clean        the model as is
  sae          the site replaced by the SAE's reconstruction (no error term)
  zero         the site replaced by zeros
  CE recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean)    (1 = as good as clean)
  KL(clean ‖ sae) and KL(clean ‖ zero): mean over the same tokens, in nats.
Position 0 is left unspliced by default (`skip_first`): its residual is an attention sink with a
norm tens of times the rest, which an SAE trained on typical tokens does not model.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple, Sequence

import torch
import torch.nn.functional as F

from ..capture import tokenize
from ..intervene import edit
from ..models import Subject
from ..store import ActivationStore
from .model import Sae


class ReconstructionMetrics(NamedTuple):
    """How well an SAE reconstructs activations (means over rows)."""

    rows: int
    """rows evaluated"""
    fvu: float
    """fraction of variance unexplained: sum |x - x_hat|^2 / sum |x - mean(x)|^2"""
    explained_variance: float
    """1 - fvu"""
    l0: float
    """latents active per row"""
    cosine: float
    """cosine similarity of x and x_hat"""
    l2_ratio: float
    """|x_hat| / |x|"""
    dead_frac: float
    """share of latents that never fired on these rows"""


class LmMetrics(NamedTuple):
    """The language model's next-token loss with the SAE spliced in (per token)."""

    tokens: int
    """tokens scored"""
    ce_clean: float
    """cross-entropy of the plain model"""
    ce_sae: float
    """cross-entropy with the site replaced by the SAE's reconstruction"""
    ce_zero: float
    """cross-entropy with the site zeroed"""
    ce_recovered: float | None
    """(ce_zero - ce_sae) / (ce_zero - ce_clean); None when zeroing changes nothing"""
    kl_sae: float
    """KL(clean || SAE) of the next-token distributions"""
    kl_zero: float
    """KL(clean || zeroed)"""


@torch.no_grad()
def reconstruction_metrics(
    sae: Sae, data: ActivationStore | torch.Tensor | Iterable[torch.Tensor], site: str | None = None,
    max_rows: int | None = None, batch_size: int = 4096, skip_first: bool = True,
) -> dict:
    """FVU, explained variance, L0, cosine, l2 ratio and dead fraction over the first `max_rows` rows
    (of a store: leaving out position-0 rows when skip_first, as training does)."""
    if isinstance(data, ActivationStore):
        chunks = (a[i["positions"] > 0] if skip_first else a
                  for a, i in data.iter_shards(site or sae.cfg.site, with_index=True, verify=False))
    elif isinstance(data, torch.Tensor):
        chunks = [data]
    else:
        chunks = data
    n = 0
    sq_err = sum_x = sum_sq = cos = ratio = l0 = 0.0
    fired = torch.zeros(sae.cfg.width, dtype=torch.bool)
    for chunk in chunks:
        for i in range(0, len(chunk), batch_size):
            x = chunk[i : i + batch_size].float()  # [b, d]
            if max_rows is not None:
                x = x[: max_rows - n]
            if not len(x):
                break
            lat = sae.encode(x)  # [b, width]
            rec = sae.decode(lat)  # [b, d]
            sq_err += (x - rec).pow(2).sum().item()
            sum_x = sum_x + x.double().sum(0)
            sum_sq += x.double().pow(2).sum().item()
            cos += F.cosine_similarity(x, rec, dim=1).sum().item()
            ratio += (rec.norm(dim=1) / x.norm(dim=1).clamp_min(1e-8)).sum().item()
            active = lat > 0
            l0 += active.sum().item()
            fired |= active.any(0).cpu()
            n += len(x)
        if max_rows is not None and n >= max_rows:
            break
    if n == 0:
        raise ValueError("no rows to evaluate the SAE on")
    total_var = sum_sq - (sum_x.pow(2).sum().item() / n)  # Σ|x - x̄|²
    fvu = sq_err / total_var
    return ReconstructionMetrics(n, fvu, 1 - fvu, l0 / n, cos / n, ratio / n, 1 - fired.float().mean().item())


def _next_token_stats(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, ref_logp: torch.Tensor | None):
    """Summed CE (and KL to ref) over positions whose next token is real. logits [b, s, v]."""
    logp = logits[:, :-1].float().log_softmax(-1)  # [b, s-1, v]
    target = ids[:, 1:]
    valid = (mask[:, 1:] & mask[:, :-1]).bool()  # [b, s-1]
    ce = -logp.gather(-1, target[..., None])[..., 0]  # [b, s-1]
    kl = None
    if ref_logp is not None:
        kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)[valid].sum().item()
    return ce[valid].sum().item(), int(valid.sum()), kl, logp


@torch.no_grad()
def lm_metrics(
    subject: Subject, sae: Sae, site: str, texts: Sequence[str], batch_size: int = 8, max_length: int = 128,
    skip_first: bool = True,
) -> dict:
    """CE loss clean / with the SAE spliced in / zero-ablated, CE recovered and KL (see module doc)."""
    sae = sae.to(subject.device)
    sums = dict(clean=0.0, sae=0.0, zero=0.0, kl_sae=0.0, kl_zero=0.0)
    n_tok = 0
    for start in range(0, len(texts), batch_size):
        enc = tokenize(subject, texts[start : start + batch_size], max_length)
        ids = enc["input_ids"].to(subject.device)  # [b, s]
        mask = enc["attention_mask"].to(subject.device).bool()  # [b, s]
        splice = mask.clone()
        if skip_first:
            splice[:, 0] = False

        def run():
            return subject.model(input_ids=ids, attention_mask=mask.long(), use_cache=False).logits

        ce, n, _, ref = _next_token_stats(run(), ids, mask, None)
        sums["clean"] += ce
        n_tok += n
        with edit(subject, site, lambda a: sae.decode(sae.encode(a.float())).to(a.dtype), positions=splice):
            ce, _, kl, _ = _next_token_stats(run(), ids, mask, ref)
        sums["sae"], sums["kl_sae"] = sums["sae"] + ce, sums["kl_sae"] + kl
        with edit(subject, site, lambda a: torch.zeros_like(a), positions=splice):
            ce, _, kl, _ = _next_token_stats(run(), ids, mask, ref)
        sums["zero"], sums["kl_zero"] = sums["zero"] + ce, sums["kl_zero"] + kl
    m = {k: v / max(1, n_tok) for k, v in sums.items()}
    recovered = (m["zero"] - m["sae"]) / (m["zero"] - m["clean"]) if m["zero"] != m["clean"] else None
    return LmMetrics(n_tok, m["clean"], m["sae"], m["zero"], recovered, m["kl_sae"], m["kl_zero"])
