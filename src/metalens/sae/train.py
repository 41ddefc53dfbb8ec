"""Train an SAE on activations streamed from an ActivationStore (or a tensor in memory).

    cfg = SaeTrainConfig(out="saes/resid15-k32", site="resid.15", k=32, width=4608, steps=2000)
    sae = train_sae(cfg, ActivationStore("acts/resid15"))

Writes to cfg.out: train_config.json (this config), checkpoint.pt (every `checkpoint_every`
steps: weights, Adam state, step, dead-latent counters; a rerun of the same config resumes from
it and gives the same SAE as an uninterrupted run), and at the end cfg.json +
sae_weights.safetensors (SAELens layout) and train_log.json (FVU / L0 / dead fraction).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Literal

import torch
from tqdm.auto import tqdm

from ..errors import DataError, DataTypeError
from ..io import atomic_write_bytes, atomic_write_json
from ..store import ActivationStore
from .io import load_sae, save_sae
from .model import Sae, SaeConfig

CHECKPOINT = "checkpoint.pt"
TRAIN_CONFIG = "train_config.json"


@dataclass(frozen=True)
class SaeTrainConfig:
    out: str
    """directory for the SAE, its config, checkpoints and log"""
    site: str = "resid.15"
    """site whose activations it reads (must be in the store)"""
    k: int = 32
    """latents kept per row (on average, for BatchTopK)"""
    width: int = 4608
    """number of latents"""
    kind: Literal["topk", "batchtopk"] = "topk"
    """topk: k latents per row; batchtopk: k x rows per batch"""
    batch_size: int = 4096
    """rows per step"""
    steps: int = 1000
    """optimizer steps (the data is cycled, reshuffled each epoch, if it runs out)"""
    lr: float = 0.0
    """Adam learning rate; 0 = 2e-4 / sqrt(width / 2^14) (sparsify's scaling rule)"""
    aux_coef: float = 1 / 32
    """weight of the AuxK loss"""
    aux_k: int = 0
    """latents used by AuxK; 0 = d_in // 2"""
    dead_tokens: int = 1_000_000
    """a latent that has not fired for this many training tokens counts as dead"""
    b_dec_init: Literal["median", "mean", "zero"] = "median"
    """median (geometric) | mean | zero: b_dec from the first batch"""
    skip_first: bool = True
    """drop rows at token position 0 of a store (an attention sink: ~100x the norm of other tokens on SmolLM2)"""
    normalize: bool = True
    """scale inputs to mean norm sqrt(d_in) while training (folded into the weights on save)"""
    seed: int = 0
    """weights init and data order"""
    checkpoint_every: int = 200
    """steps between checkpoints (0 = only at the end)"""
    log_every: int = 50
    """steps between log lines (FVU, L0, dead fraction)"""


class BatchSource:
    """Shuffled [batch, d] batches, forever: epoch e is shuffled with seed + e. Skips `start` batches."""

    def __init__(self, data: ActivationStore | torch.Tensor, site: str, skip_first: bool = False):
        self.data, self.site, self.skip_first = data, site, skip_first
        if isinstance(data, ActivationStore):
            data._check_site(site)
            self.d = data.manifest.widths[site]
            self.n = len(data)  # upper bound when skip_first
        elif isinstance(data, torch.Tensor):
            if data.ndim != 2:
                raise DataError(f"training data must be [n, d]; got {tuple(data.shape)}")
            bad = ~torch.isfinite(data).all(dim=1)  # [n]
            if bad.any():
                raise DataError(f"training data row {int(bad.nonzero()[0, 0])} (of {len(data)}) holds NaN or inf; "
                                f"{int(bad.sum())} rows do: clean the data first")
            self.d, self.n = data.shape[1], data.shape[0]
        else:
            raise DataTypeError(f"training data must be an ActivationStore or a [n, d] tensor; got {type(data).__name__}")

    def _shard(self, i: int) -> torch.Tensor:
        t = self.data.read_shard(i, [self.site, "positions"])
        x = t[self.site].float()  # [rows, d]
        return x[t["positions"] > 0] if self.skip_first else x

    def mean_norm(self) -> float:
        if isinstance(self.data, ActivationStore):
            if not self.skip_first:
                return self.data.mean_norm(self.site)
            total = count = 0.0
            for i in range(len(self.data.manifest.shards)):
                x = self._shard(i)
                total, count = total + x.norm(dim=1).sum().item(), count + len(x)
            return total / max(1, count)
        return self.data.float().norm(dim=1).mean().item()

    def epoch(self, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
        if isinstance(self.data, ActivationStore):
            yield from self.data.batches(self.site, batch_size, seed=seed, skip_first=self.skip_first)
            return
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(seed))
        for i in range(0, self.n - batch_size + 1, batch_size):
            yield self.data[perm[i : i + batch_size]].float()

    def stream(self, batch_size: int, seed: int, start: int = 0) -> Iterator[torch.Tensor]:
        if self.n < batch_size:
            raise DataError(f"batch_size {batch_size} is larger than the data ({self.n} rows)")
        seen, epoch = 0, 0
        while True:
            for batch in self.epoch(batch_size, seed + epoch):
                if seen >= start:
                    yield batch
                seen += 1
            epoch += 1


def check_config(cfg: SaeTrainConfig) -> None:
    """DataError naming the first field out of range (before anything is read or written)."""
    def whole(x) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    for name, low in (("width", 1), ("k", 1), ("batch_size", 1), ("steps", 1), ("aux_k", 0), ("dead_tokens", 1),
                      ("checkpoint_every", 0), ("log_every", 1)):
        v = getattr(cfg, name)
        if not whole(v) or v < low:
            raise DataError(f"SAE training {name} must be an integer >= {low}, got {v!r}")
    if cfg.k > cfg.width:
        raise DataError(f"SAE training k={cfg.k} is more than the width {cfg.width}; accepted: 1..width")
    for name in ("lr", "aux_coef"):
        v = getattr(cfg, name)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            raise DataError(f"SAE training {name} must be a finite number >= 0, got {v!r}")
    if cfg.kind not in ("topk", "batchtopk"):
        raise DataError(f"SAE kind must be topk or batchtopk, got {cfg.kind!r}")
    if cfg.b_dec_init not in ("median", "mean", "zero"):
        raise DataError(f"b_dec_init must be median, mean or zero, got {cfg.b_dec_init!r}")


def _save_checkpoint(path: Path, sae: Sae, opt, step: int, since_fired: torch.Tensor, log: list, acc: list) -> None:
    buf = io.BytesIO()
    state = dict(sae=sae.state_dict(), opt=opt.state_dict(), step=step, since_fired=since_fired, log=log, acc=acc)
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def train_sae(
    cfg: SaeTrainConfig, data: ActivationStore | torch.Tensor, model_name: str = "", progress: bool = True,
    stop_after: int | None = None,
) -> Sae:
    """Train (or resume) an SAE as `cfg` says; returns it (weights also saved under cfg.out).

    stop_after: stop (after checkpointing) once this many steps are done, as a kill would; for tests.
    """
    check_config(cfg)
    out = Path(cfg.out)
    src = BatchSource(data, cfg.site, cfg.skip_first)
    if isinstance(data, ActivationStore) and not model_name:
        model_name = data.manifest.model
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / TRAIN_CONFIG
    if cfg_path.exists() and (out / CHECKPOINT).exists():
        old = json.loads(cfg_path.read_text())
        if old != asdict(cfg):
            diff = {k: (old.get(k), v) for k, v in asdict(cfg).items() if old.get(k) != v}
            raise DataError(f"{out} holds a checkpoint of a different training config {diff}; use another --out")
    atomic_write_json(cfg_path, asdict(cfg))

    torch.manual_seed(cfg.seed)
    scale = math.sqrt(src.d) / max(src.mean_norm(), 1e-8) if cfg.normalize else 1.0
    sae_cfg = SaeConfig(d_in=src.d, width=cfg.width, k=cfg.k, kind=cfg.kind, site=cfg.site, model=model_name,
                        aux_k=cfg.aux_k, input_scale=scale)
    sae = Sae(sae_cfg, seed=cfg.seed)
    lr = cfg.lr or 2e-4 / math.sqrt(cfg.width / 2**14)
    opt = torch.optim.Adam(sae.parameters(), lr=lr, eps=6.25e-10)
    since_fired = torch.zeros(cfg.width, dtype=torch.long)
    step, log = 0, []
    acc = [0.0, 0.0, 0]  # running sums of FVU and L0, and steps, since the last log line
    ckpt = out / CHECKPOINT
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)  # tensors and plain containers only: no unpickling of code
        sae.load_state_dict(state["sae"])
        opt.load_state_dict(state["opt"])
        step, since_fired, log, acc = state["step"], state["since_fired"], state["log"], state["acc"]

    batches = src.stream(cfg.batch_size, cfg.seed, start=step)
    if step == 0:
        first = next(src.stream(cfg.batch_size, cfg.seed))
        sae.init_b_dec(first[: min(len(first), 4096)] * scale, cfg.b_dec_init)
    sae.train()
    bar = tqdm(total=cfg.steps, initial=step, desc=f"sae {cfg.site} k={cfg.k} w={cfg.width}", disable=not progress)
    while step < cfg.steps:
        x = next(batches) * scale  # [batch, d_in]
        dead = since_fired > cfg.dead_tokens
        out_ = sae(x, dead=dead)
        loss = out_.fvu + cfg.aux_coef * out_.aux_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_parallel_grad()
        opt.step()
        sae.normalize_decoder()
        with torch.no_grad():
            fired = torch.zeros(cfg.width, dtype=torch.bool)
            fired[out_.top_idx[out_.top_acts > 0]] = True
            since_fired += len(x)
            since_fired[fired] = 0
            if cfg.kind == "batchtopk":
                sae.update_threshold(out_.top_acts)
            l0 = (out_.top_acts > 0).sum(1).float().mean().item()
        step += 1
        acc = [acc[0] + out_.fvu.item(), acc[1] + l0, acc[2] + 1]
        if step % cfg.log_every == 0 or step == cfg.steps:
            row = dict(step=step, tokens=step * cfg.batch_size, fvu=acc[0] / acc[2], l0=acc[1] / acc[2],
                       dead_frac=dead.float().mean().item(), aux_loss=out_.aux_loss.item())
            log.append(row)
            bar.set_postfix(fvu=f"{row['fvu']:.4f}", l0=f"{row['l0']:.1f}", dead=f"{row['dead_frac']:.3f}")
            acc = [0.0, 0.0, 0]
        bar.update(1)
        if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.steps:
            _save_checkpoint(ckpt, sae, opt, step, since_fired, log, acc)
        if stop_after is not None and step >= stop_after:
            _save_checkpoint(ckpt, sae, opt, step, since_fired, log, acc)
            bar.close()
            return sae.eval()
    bar.close()
    sae.eval()
    save_sae(sae, out, extra=dict(train=asdict(cfg)))
    atomic_write_json(out / "train_log.json", log)
    return load_sae(out)  # input scale folded in: reads raw activations
