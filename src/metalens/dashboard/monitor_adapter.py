"""ADAPTER (replaceable): `watch` with the monitor contract's signature, for the live view.

The method-layer monitor (`metalens.monitor.watch`) is built separately; until it is present the
dashboard streams through this stand-in, which keeps the contract's names and behaviour: one
`TokenReading` per generated token as soon as it is decoded, the readers' values at that token's
own position, flags where a reader crosses its threshold, `stop.set()` ends at the next token,
`abort_on` ends after a flagged token. `watch()` below prefers `metalens.monitor.watch` when it
exists, so the lead can delete this file's generation loop once the monitor lands.
"""

from __future__ import annotations

import threading
from typing import Callable, Iterator, NamedTuple, Sequence

import torch

from ..features import Feature
from ..models import Subject
from ..sites import hook_site


class TokenReading(NamedTuple):
    token: str
    """decoded text of the generated token"""
    position: int
    """index in the full sequence (prompt + generated)"""
    readings: dict[str, float]
    """reading name -> value at this token"""
    flags: list[str]
    """names of readings that crossed their threshold at this token"""


class FeatureReader:
    """A Reading source from a core Feature: .name, .site, .threshold, __call__(acts [n, d]) -> [n]."""

    def __init__(self, feature: Feature, threshold: float | None = None, name: str | None = None):
        self.feature, self.name, self.site, self.threshold = feature, name or feature.id, feature.site, threshold

    def __call__(self, acts: torch.Tensor) -> torch.Tensor:
        return self.feature(acts)


def monitor_watch():
    """`metalens.monitor.watch` if the monitor module is installed, else this adapter's `adapter_watch`."""
    try:
        from ..monitor import watch  # type: ignore[attr-defined]
    except ImportError:
        return adapter_watch
    return watch


@torch.no_grad()
def adapter_watch(subject: Subject, prompt: str | list[dict], readers: Sequence = (), max_new_tokens: int = 64,
                  chat: bool = True, abort_on: Sequence[str] = (), on_flag: Callable | None = None,
                  stop: threading.Event | None = None, oracle_fn: Callable[[list[int]], dict[str, float]] | None = None,
                  every: int = 8) -> Iterator[TokenReading]:
    """Greedy generation, one token at a time with the KV cache; readings from the same forward passes."""
    tok, model = subject.tokenizer, subject.model
    text = subject.chat(prompt) if chat else prompt
    ids = tok(text, return_tensors="pt", add_special_tokens=not chat)["input_ids"].to(subject.device)  # [1, seq]
    seen: dict[str, torch.Tensor] = {}

    def recorder(name: str):
        def fn(act: torch.Tensor):  # [1, seq, d]
            seen[name] = act[0, -1:].float()  # [1, d] the newest token
            return None

        return fn

    sites = sorted({str(subject.site(r.site)) for r in readers})
    handles = [hook_site(model, subject.site(s), recorder(s)) for s in sites]
    eos = {tok.eos_token_id, tok.pad_token_id} - {None}
    all_ids = ids[0].tolist()
    try:
        out = model(input_ids=ids, use_cache=True)
        past = out.past_key_values
        for step in range(max_new_tokens):
            if stop is not None and stop.is_set():
                return
            nxt = int(out.logits[0, -1].argmax())
            if nxt in eos:
                return
            all_ids.append(nxt)
            out = model(input_ids=torch.tensor([[nxt]], device=subject.device), past_key_values=past, use_cache=True)
            past = out.past_key_values
            readings = {r.name: float(r(seen[str(subject.site(r.site))])[0]) for r in readers}
            if oracle_fn is not None and (step + 1) % every == 0:
                readings.update(oracle_fn(list(all_ids)))
            flags = [r.name for r in readers if r.threshold is not None and readings[r.name] > r.threshold]
            reading = TokenReading(tok.decode([nxt]), len(all_ids) - 1, readings, flags)
            if flags and on_flag is not None:
                on_flag(reading)
            yield reading
            if any(f in abort_on for f in flags):
                return
    finally:
        for h in handles:
            h.remove()
