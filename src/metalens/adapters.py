"""LoRA adapters (peft): a fresh adapter on a model, a trainable copy of a subject, a merged copy.

`target_modules="all-linear"` puts the adapter on every linear layer but the unembedding, so the
same call works on every family in `sites.ARCHS`.
"""

from __future__ import annotations

import copy
import json
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from .errors import DataError
from .models import Subject, subject_from


@contextmanager
def _quiet_peft():
    """peft asks transformers a deprecated question (`is_gradient_checkpointing`); the FutureWarning is theirs."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def add_lora(model: torch.nn.Module, rank: int = 16, alpha: int | None = None, dropout: float = 0.0, seed: int = 0):
    """Wrap `model` in place with a fresh LoRA (alpha defaults to 2 x rank) and return the peft model."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(r=rank, lora_alpha=alpha or 2 * rank, lora_dropout=dropout, target_modules="all-linear",
                     bias="none")
    with _quiet_peft():
        return get_peft_model(model, cfg)


def lora_copy(subject: Subject, rank: int = 8, lr: float = 2e-3, seed: int = 0):
    """(peft model, AdamW) for fine-tuning a LoRA on a deep copy of the subject's model, in train mode.

    The subject itself is left untouched."""
    model = add_lora(copy.deepcopy(subject.model), rank, seed=seed)
    model.train()
    return model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)


def load_adapter(model: torch.nn.Module, adapter_dir: str, trainable: bool = False):
    """Put a saved peft adapter onto `model` (in place) and return the peft model."""
    from peft import PeftModel

    with _quiet_peft():
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)


def with_adapter(base: Subject, adapter_dir: str) -> Subject:
    """A copy of `base` with a saved LoRA adapter merged in, as a separate Subject."""
    model = load_adapter(copy.deepcopy(base.model), adapter_dir).merge_and_unload()
    model.requires_grad_(False)
    return subject_from(model, base.tokenizer, name=f"{base.name}+{str(adapter_dir).rstrip('/').split('/')[-1]}")


# ---- compact adapters: the trainable LoRA tensors as fp16 safetensors + a JSON config --------------------
def lora_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable LoRA tensors of a peft model, by name."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad and "lora_" in n}


def save_lora(model: torch.nn.Module, out: str | Path, config: dict) -> None:
    """Write adapter.safetensors (fp16, trainable LoRA tensors only) and adapter.json (`config`)."""
    from safetensors.torch import save

    from .io import atomic_write_bytes, atomic_write_json

    out = Path(out)
    state = {n: t.half().contiguous().cpu() for n, t in lora_state(model).items()}
    atomic_write_bytes(out / "adapter.safetensors", save(state))
    atomic_write_json(out / "adapter.json", config)


def add_lora_for(model: torch.nn.Module, config: dict) -> torch.nn.Module:
    """A fresh peft LoRA on `model` (in place) as `config` says, trainable only from layer config['first_layer']."""
    peft_model = add_lora(model, config["rank"], config.get("alpha"), seed=config.get("seed", 0))
    first = config.get("first_layer", 0)
    for n, p in peft_model.named_parameters():
        if "lora_" in n:
            p.requires_grad_(layer_of(n) >= first)
    return peft_model


def layer_of(name: str) -> int:
    parts = name.split(".")
    return int(parts[parts.index("layers") + 1]) if "layers" in parts else -1


def copy_lora_weights(model: torch.nn.Module, w_path: str | Path, base_model: str = "another model") -> None:
    """Copy the LoRA tensors saved at w_path (save_lora) into the same-named parameters of a peft model."""
    from safetensors.torch import load_file

    state = load_file(str(w_path))
    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise DataError(f"{w_path}: {len(missing)} tensors do not fit this model (e.g. {missing[0]}); "
                        f"was it trained on {base_model}?")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t.to(params[n].dtype))


def load_lora(base: torch.nn.Module, adapter_dir: str | Path, trainable: bool = False) -> torch.nn.Module:
    """A copy of `base` with the adapter in adapter_dir: merged (plain model) or, if trainable, a peft model."""
    adapter_dir = Path(adapter_dir)
    cfg_path, w_path = adapter_dir / "adapter.json", adapter_dir / "adapter.safetensors"
    if not cfg_path.is_file() or not w_path.is_file():
        raise DataError(f"{adapter_dir} holds no adapter (needs adapter.json and adapter.safetensors)")
    config = json.loads(cfg_path.read_text())
    model = add_lora_for(copy.deepcopy(base), config)
    copy_lora_weights(model, w_path, config.get("base_model", "another model"))
    if trainable:
        return model
    merged = model.merge_and_unload()
    merged.requires_grad_(False)
    return merged.eval()
