"""Names of places in a model, and the one place that knows how to hook them.

A site is "<kind>.<layer>":
  resid.L    residual stream after block L          (output of block L)        [.., d_model]
  mlp.L      MLP output of block L                   (output of the MLP)        [.., d_model]
  attn.L     attention output of block L             (output of self-attention) [.., d_model]
  neurons.L  MLP hidden units of block L             (input of the down proj)   [.., d_mlp]

Architectures are rows of `ARCHS`; adding GPT-2 or GPT-NeoX is one more row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .errors import MetalensError

KINDS = ("resid", "mlp", "attn", "neurons")


@dataclass(frozen=True)
class Arch:
    """Where a model family keeps its blocks, as dotted attribute paths."""

    layers: str
    """path from the top model to the list of blocks"""
    attn: str
    """path from a block to its attention module"""
    mlp: str
    """path from a block to its MLP module"""
    down: str
    """path from a block to the MLP's output projection (its input is the neurons)"""
    embed: str
    """path from the top model to the token embedding"""
    final_norm: str
    """path from the top model to the final norm"""
    trunk: str = "model"
    """path from the top model to the trunk (embeddings + blocks + final norm, no unembedding)"""
    norm_offset: float = 0.0
    """the final norm scales by (offset + weight): 1.0 for Gemma, 0.0 elsewhere"""


_LLAMA = Arch("model.layers", "self_attn", "mlp", "mlp.down_proj", "model.embed_tokens", "model.norm")
_GEMMA = Arch("model.layers", "self_attn", "mlp", "mlp.down_proj", "model.embed_tokens", "model.norm", norm_offset=1.0)
ARCHS: dict[str, Arch] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma": _GEMMA,
    "gemma2": _GEMMA,
    "gemma3_text": _GEMMA,
    "gpt2": Arch("transformer.h", "attn", "mlp", "mlp.c_proj", "transformer.wte", "transformer.ln_f", "transformer"),
    "gpt_neox": Arch(
        "gpt_neox.layers", "attention", "mlp", "mlp.dense_4h_to_h", "gpt_neox.embed_in", "gpt_neox.final_layer_norm",
        "gpt_neox",
    ),
}


class SiteError(MetalensError, ValueError):
    """An unknown site or a model family without a row in ARCHS."""


@dataclass(frozen=True, order=True)
class Site:
    layer: int
    kind: str

    def __str__(self) -> str:
        return f"{self.kind}.{self.layer}"


def arch_of(model: nn.Module) -> Arch:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ARCHS:
        raise SiteError(
            f"model type {model_type!r} has no site table; supported: {sorted(ARCHS)}. "
            "Add a row to metalens.sites.ARCHS for it."
        )
    return ARCHS[model_type]


def get_path(root: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        root = getattr(root, part)
    return root


def blocks(model: nn.Module) -> nn.ModuleList:
    return get_path(model, arch_of(model).layers)


def trunk(model: nn.Module) -> nn.Module:
    """The model without its unembedding: input ids -> final hidden states (after the final norm)."""
    return get_path(model, arch_of(model).trunk)


def valid_sites(n_layers: int) -> str:
    return ", ".join(f"{k}.0..{k}.{n_layers - 1}" for k in KINDS)


def parse_site(site: str | Site, n_layers: int) -> Site:
    """'resid.12' -> Site(12, 'resid'); negative layers count from the end ('resid.-1')."""
    if isinstance(site, Site):
        kind, layer = site.kind, site.layer
    else:
        kind, _, num = str(site).strip().partition(".")
        try:
            layer = int(num)
        except ValueError:
            raise SiteError(f"unknown site {site!r}: expected '<kind>.<layer>', valid: {valid_sites(n_layers)}") from None
    if layer < 0:
        layer += n_layers
    if kind not in KINDS or not 0 <= layer < n_layers:
        raise SiteError(f"unknown site {str(site)!r}: valid sites are {valid_sites(n_layers)}")
    return Site(layer, kind)


def site_module(model: nn.Module, site: Site) -> tuple[nn.Module, bool]:
    """The module whose output (or, if the flag is True, whose input) is the site."""
    arch = arch_of(model)
    block = blocks(model)[site.layer]
    if site.kind == "resid":
        return block, False
    if site.kind == "attn":
        return get_path(block, arch.attn), False
    if site.kind == "mlp":
        return get_path(block, arch.mlp), False
    return get_path(block, arch.down), True  # neurons


def site_width(model: nn.Module, site: Site) -> int:
    if site.kind == "neurons":
        down = get_path(blocks(model)[site.layer], arch_of(model).down)
        w = down.weight  # nn.Linear: [out, in]; GPT-2 Conv1D: [in, out]
        return w.shape[0] if type(down).__name__ == "Conv1D" else w.shape[1]
    return model.config.hidden_size


# fn(activation [batch, seq, d]) -> replacement of the same shape, or None to leave it unchanged
SiteFn = Callable[[torch.Tensor], "torch.Tensor | None"]


def hook_site(model: nn.Module, site: Site, fn: SiteFn) -> torch.utils.hooks.RemovableHandle:
    """Call fn on the site's activation on every forward pass; a returned tensor replaces it.

    The one place that knows blocks return tuples in some versions and that neurons are an input.
    """
    module, is_input = site_module(model, site)
    if is_input:

        def pre_hook(mod, args):
            new = fn(args[0])
            return None if new is None else (new, *args[1:])

        return module.register_forward_pre_hook(pre_hook)

    def hook(mod, args, output):
        act = output[0] if isinstance(output, tuple) else output
        new = fn(act)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return module.register_forward_hook(hook)
