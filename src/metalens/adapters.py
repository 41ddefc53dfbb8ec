"""LoRA adapters (peft): a fresh adapter on a model, a trainable copy of a subject, a merged copy.

`target_modules="all-linear"` puts the adapter on every linear layer but the unembedding, so the
same call works on every family in `sites.ARCHS`.
"""

from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager

import torch

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
