"""The feature an agent studies, as a `Target`: how to read it on text, its write direction, how to clamp it.

    parse_target("sae:runs/sae:123", subject)     # an SAE latent (SAELens layout)
    parse_target("neurons.5:17", subject)         # a coordinate of a site (a neuron writes its down-proj column)
    parse_target("probe:runs/probe", subject)     # a saved probe direction (needs metalens.probes)
    direction_target(subject, feature)            # any projection Feature (planted directions)
    rule_target(rule, tokenizer)                  # a rule on token strings (autointerp.rules): no direction
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..autointerp.examples import Sequences
from ..capture import capture
from ..errors import DataError, MetalensError
from ..features import Feature
from ..intervene import clamp, edit
from ..models import Subject
from ..sites import arch_of, blocks, get_path

Read = Callable[[Sequence[str]], list[tuple[list[str], np.ndarray]]]  # texts -> per text (tokens, values)


@dataclass(frozen=True)
class Target:
    """The feature under study, as the tools see it."""

    id: str
    """its name, e.g. "neurons.5:17" or "rule:countries" """
    read: Read = field(repr=False)
    """texts -> per text (token strings, values [n_tokens])"""
    site: str | None = None
    """where it reads (None for a rule on token strings)"""
    direction: torch.Tensor | None = field(default=None, repr=False)
    """[d_model] the direction it writes (logit lens), None when it has none"""
    set_value: Callable[[float], object] | None = field(default=None, repr=False)
    """value -> context manager that clamps the feature to value at every token (None: cannot intervene)"""
    truth: str | None = None
    """the known explanation of a planted feature (benchmarks only; never shown to the agent)"""
    feature: Feature | None = field(default=None, repr=False)
    """the core Feature behind it (reads a stored site), None for a rule"""


def model_read(subject: Subject, feature: Feature, max_length: int = 128) -> Read:
    """The Feature's values on texts, one capture at its site."""

    @torch.no_grad()
    def read(texts: Sequence[str]) -> list[tuple[list[str], np.ndarray]]:
        acts = capture(subject, list(texts), [feature.site], max_length=max_length, progress=False)
        vals = feature(acts[feature.site]).float().numpy().astype(np.float64)  # [n_rows]
        out = []
        for i in range(len(texts)):
            rows = (acts.text_idx == i).nonzero()[:, 0]
            ids = acts.token_ids[rows].tolist()
            out.append(([subject.tokenizer.decode([t]) for t in ids], vals[rows.numpy()]))
        return out

    return read


def neuron_direction(subject: Subject, layer: int, index: int) -> torch.Tensor:
    """[d_model] what MLP neuron `index` of block `layer` writes: its column of the down projection."""
    down = get_path(blocks(subject.model)[layer], arch_of(subject.model).down)
    w = down.weight.detach().float()
    return (w[index] if type(down).__name__ == "Conv1D" else w[:, index]).clone()


def parse_target(spec: str, subject: Subject) -> Target:
    """"sae:DIR:LATENT" (an SAE latent), "SITE:INDEX" (a coordinate, e.g. neurons.5:17) or "probe:DIR"."""
    kind, _, rest = spec.partition(":")
    if kind == "sae":
        from ..sae.features import sae_feature
        from ..sae.io import load_sae
        from ..steer import clamp_feature

        path, _, idx = rest.rpartition(":")
        if not path or not idx.isdigit():
            raise DataError(f"feature {spec!r}: expected sae:DIR:LATENT, e.g. sae:runs/sae:123")
        try:
            sae = load_sae(path)
        except (FileNotFoundError, ValueError) as e:
            raise DataError(f"feature {spec!r}: {e}") from None
        latent = int(idx)
        if not 0 <= latent < sae.cfg.width:
            raise DataError(f"feature {spec!r}: latent {latent} is out of range for an SAE of width {sae.cfg.width}")
        f = sae_feature(sae, latent)
        subject.site(f.site)
        return Target(f.id, model_read(subject, f), f.site, f.direction,
                      lambda v: clamp_feature(subject, f.site, sae, latent, v), feature=f)
    if kind == "probe":
        try:
            from .. import probes  # a method module that may be absent from an older checkout
        except ImportError:
            raise DataError(f"feature {spec!r}: probe features need metalens.probes, which this installation "
                            "does not have; give sae:DIR:LATENT or SITE:INDEX") from None
        try:
            p = probes.load_probe(rest)
        except MetalensError as e:
            raise DataError(f"feature {spec!r}: {e}") from None
        width = subject.width(p.site)
        if p.weight.shape[0] != width:
            raise DataError(f"feature {spec!r}: the probe reads {p.site} with width {p.weight.shape[0]}, but this "
                            f"model's {p.site} has width {width}")
        return direction_target(subject, Feature.from_direction(p.site, p.weight, p.name, p.bias))
    site, _, idx = spec.rpartition(":")
    if not site or not idx.isdigit():
        raise DataError(f"feature {spec!r}: expected sae:DIR:LATENT, SITE:INDEX (e.g. neurons.5:17) or probe:DIR")
    parsed = subject.site(site)
    index, width = int(idx), subject.width(site)
    if not 0 <= index < width:
        raise DataError(f"feature {spec!r}: index {index} is out of range for {site} (width {width})")
    f = Feature.neuron(str(parsed), index)
    direction = neuron_direction(subject, parsed.layer, index) if parsed.kind == "neurons" else None

    def set_value(v: float):
        def fn(a: torch.Tensor) -> torch.Tensor:  # [n, width]
            a = a.clone()
            a[:, index] = v
            return a

        return edit(subject, str(parsed), fn)

    return Target(f.id, model_read(subject, f), str(parsed), direction, set_value, feature=f)


def direction_target(subject: Subject, feature: Feature, truth: str | None = None) -> Target:
    """A projection Feature (probe or planted direction); clamping sets the projection to the value."""
    v = feature.direction
    norm = float(v.norm())

    def set_value(value: float):
        return clamp(subject, feature.site, v, value / norm)

    return Target(feature.id, model_read(subject, feature), feature.site, v, set_value, truth, feature)


def rule_target(rule, tokenizer, truth: str | None = None) -> Target:
    """A rule on token strings (autointerp.rules.Rule) as a planted feature: no direction, no intervention."""

    def read(texts: Sequence[str]) -> list[tuple[list[str], np.ndarray]]:
        out = []
        for t in texts:
            ids = tokenizer(t, add_special_tokens=False)["input_ids"][:128]
            toks = [tokenizer.decode([i]) for i in ids]
            out.append((toks, rule.values(toks)))
        return out

    return Target(f"rule:{rule.name}", read, truth=truth if truth is not None else rule.explanations[0])




def store_corpus(store_dir: str | Path, target: Target, tokenizer) -> Sequences:
    """The target's token strings and values on every text of an activation store (no forward pass)."""
    from ..autointerp.examples import feature_sequences
    from ..store import ActivationStore

    st = ActivationStore(store_dir)
    if st.manifest.positions != "all":
        raise DataError(f"the store {store_dir} kept positions={st.manifest.positions!r}; exemplars need a store "
                        "captured with positions=all")
    if target.feature is None or target.site not in st.sites:
        raise DataError(f"the store {store_dir} holds sites {st.sites}; feature {target.id} reads "
                        f"{target.site!r}: capture that site, or give --texts instead")
    return feature_sequences(st, target.feature, tokenizer)
