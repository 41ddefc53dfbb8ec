"""Save and load SAEs in SAELens's on-disk layout: `cfg.json` + `sae_weights.safetensors`.

SAELens users load ours with `SAE.load_from_disk(dir)`; we load theirs (topk, batchtopk and
jumprelu architectures) with `load_sae(dir)`. Our own config rides along under
cfg["metadata"]["metalens"]. Input normalisation is folded into the weights on save, so a saved
SAE always reads raw activations.

A BatchTopK SAE is saved as SAELens architecture "jumprelu" with its learned threshold (one
value per latent); a TopK SAE as "topk" with its k.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, replace
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from ..errors import DataError
from ..io import atomic_write_bytes, atomic_write_json
from .model import Sae, SaeConfig

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"


def folded_state(sae: Sae) -> dict[str, torch.Tensor]:
    """Weights for raw inputs: a latent of the normalised SAE, divided by the input scale s.

    With x_n = s x: pre(x_n) = s * ((x - b_dec/s) W_enc + b_enc/s), so b_enc and b_dec and the
    threshold divide by s, the latents do too, and the unit-norm decoder stays as it is.
    """
    s = sae.cfg.input_scale
    return {
        "W_enc": sae.W_enc.detach().float().contiguous(),
        "b_enc": (sae.b_enc.detach().float() / s).contiguous(),
        "W_dec": sae.W_dec.detach().float().contiguous(),
        "b_dec": (sae.b_dec.detach().float() / s).contiguous(),
        "threshold": (sae.threshold.detach().float() / s).reshape(()),
    }


def save_sae(sae: Sae, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write cfg.json + sae_weights.safetensors (atomically) for raw, un-normalised inputs."""
    path = Path(path)
    cfg = sae.cfg
    st = folded_state(sae)
    tensors = {k: st[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    if cfg.kind == "batchtopk":
        if float(st["threshold"]) < 0:
            raise ValueError("this BatchTopK SAE has no learned threshold yet (train it first)")
        arch = "jumprelu"
        tensors["threshold"] = st["threshold"].expand(cfg.width).contiguous()
    else:
        arch = "topk"
    ours = asdict(replace(cfg, input_scale=1.0))
    saelens_cfg = {
        "architecture": arch,
        "d_in": cfg.d_in,
        "d_sae": cfg.width,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "model_name": cfg.model,
            "hook_name": cfg.site,
            "metalens": {**ours, **(extra or {})},
        },
    }
    if arch == "topk":
        saelens_cfg["k"] = cfg.k
        saelens_cfg["rescale_acts_by_decoder_norm"] = False
    atomic_write_bytes(path / WEIGHTS_FILE, st_save(tensors))
    atomic_write_json(path / CFG_FILE, saelens_cfg)
    return path


def _positive_int(raw: dict, key: str, where: Path) -> int:
    v = raw.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or int(v) != v or v < 1:
        raise DataError(f"{where}: {key!r} must be a positive integer, got {v!r}")
    return int(v)


def load_sae(path: str | os.PathLike, device: str | torch.device = "cpu") -> Sae:
    """Load ours or a SAELens SAE (topk / jumprelu) from a directory; a malformed one is a DataError naming the file."""
    from safetensors import SafetensorError

    path = Path(path)
    cfg_path, w_path = path / CFG_FILE, path / WEIGHTS_FILE
    if not cfg_path.is_file() or not w_path.is_file():
        raise DataError(f"{str(path)!r} is not an SAE directory: expected {CFG_FILE} and {WEIGHTS_FILE} in it")
    try:
        raw = json.loads(cfg_path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise DataError(f"{cfg_path} is not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{cfg_path}: expected a JSON object, got {type(raw).__name__}")
    try:
        w = load_file(w_path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise DataError(f"{w_path} cannot be read as safetensors ({e})") from None
    arch = raw.get("architecture", "standard")
    meta = raw.get("metadata") or {}
    if not isinstance(meta, dict):
        raise DataError(f"{cfg_path}: 'metadata' must be an object, got {type(meta).__name__}")
    ours = meta.get("metalens")
    if ours is not None and not isinstance(ours, dict):
        raise DataError(f"{cfg_path}: metadata.metalens must be an object, got {type(ours).__name__}")
    if raw.get("apply_b_dec_to_input") is False:
        raise DataError(f"{path}: apply_b_dec_to_input=false SAEs are not supported (ours subtract b_dec first)")
    if raw.get("normalize_activations", "none") not in ("none", None):
        raise DataError(f"{path}: normalize_activations={raw['normalize_activations']!r} is not supported; fold it first")
    d_in, width = _positive_int(raw, "d_in", cfg_path), _positive_int(raw, "d_sae", cfg_path)
    if arch == "topk":
        kind, k = "topk", _positive_int(raw, "k", cfg_path)
    elif arch == "jumprelu":
        kind, k = "batchtopk", _positive_int({"k": (ours or {}).get("k", 32)}, "k", cfg_path)
    else:
        raise DataError(f"{path}: SAE architecture {arch!r} is not supported; accepted: topk, jumprelu")
    site = meta.get("hook_name") or raw.get("hook_name") or ""
    model = meta.get("model_name") or raw.get("model_name") or ""
    if not isinstance(site, str) or not isinstance(model, str):
        raise DataError(f"{cfg_path}: hook_name and model_name must be strings, got {site!r}, {model!r}")
    fields = dict(d_in=d_in, width=width, k=min(k, width), kind=kind, site=site, model=model)
    if ours:
        aux_k = ours.get("aux_k", 0)
        if isinstance(aux_k, bool) or not isinstance(aux_k, int) or aux_k < 0:
            raise DataError(f"{cfg_path}: metadata.metalens.aux_k must be an integer >= 0, got {aux_k!r}")
        fields["aux_k"] = aux_k
    want = {"W_enc": (d_in, width), "b_enc": (width,), "W_dec": (width, d_in), "b_dec": (d_in,)}
    if kind == "batchtopk":
        want["threshold"] = None
    for name, shape in want.items():
        if name not in w:
            raise DataError(f"{w_path} has no tensor {name!r}; it holds {sorted(w)}")
        if shape is not None and tuple(w[name].shape) != shape:
            raise DataError(f"{w_path}: {name} is {tuple(w[name].shape)} but {CFG_FILE} (d_in={d_in}, d_sae={width}) "
                            f"says {shape}")
        if not torch.isfinite(w[name].float()).all():
            raise DataError(f"{w_path}: {name} holds NaN or inf values; the SAE is corrupt (retrain or re-download it)")
    if kind == "batchtopk" and w["threshold"].numel() not in (1, width):
        raise DataError(f"{w_path}: threshold has {w['threshold'].numel()} values; expected 1 or d_sae={width}")
    try:
        sae = Sae(SaeConfig(**fields))
    except ValueError as e:
        raise DataError(f"{cfg_path}: {e}") from None
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sae, name).copy_(w[name])
        if kind == "batchtopk":
            thr = w["threshold"]
            if thr.numel() > 1 and not torch.allclose(thr, thr[0].expand_as(thr)):
                sae.register_buffer("threshold", thr.float().clone())  # per-latent JumpReLU thresholds
            else:
                sae.threshold.copy_(thr.reshape(-1)[0])
    return sae.to(device).eval()
