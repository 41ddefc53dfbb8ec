"""Live readings during generation, from the same forward pass that generates.

    for r in watch(subject, "Tell me about your day", readers=[probe, latents], abort_on=["deception"]):
        print(r.token, r.readings, r.flags)

Generation is greedy, one token at a time with a KV cache. A hook at each reader's site keeps the
activation of the token being fed in, so token t's readings come from the decoding step that
reads t and predicts t + 1: no second pass. (The last token costs one extra step.)

A reader is any object with `.name`, `.site`, `.threshold` (None: never flags) and
`__call__(acts [n, d])` returning values [n] (one reading) or [n, m] (many: the reader's `k`
strongest are reported as "name:index"). A probe is one; `TopLatents` wraps an SAE's encoder with
per-latent quantile normalisation (0.9 = as strong as that latent's top 10%).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator, NamedTuple, Sequence

import torch

from .models import Subject
from .sites import hook_site


class TokenReading(NamedTuple):
    token: str
    """decoded text of the generated token"""
    position: int
    """index in the full sequence (prompt + generated)"""
    readings: dict[str, float]
    """reading name -> value at this token"""
    flags: list[str]
    """names of readings that crossed their threshold at this token"""


def quantile_rank(values: torch.Tensor, quantiles: torch.Tensor) -> torch.Tensor:
    """values [n, w] -> the fraction of each latent's reference activations below it [n, w] (0 when inactive).

    quantiles [w, q]: each latent's sorted activation quantiles over tokens where it fired.
    """
    q = quantiles.shape[1]
    rank = torch.searchsorted(quantiles.contiguous(), values.T.contiguous(), right=True).T.float() / q  # [n, w]
    return torch.where(values > 0, rank, torch.zeros_like(rank))


@dataclass
class TopLatents:
    """The k strongest latents of an encoder at each token, as quantile ranks of each latent's own activations."""

    name: str
    """prefix of the reading names ("name:latent")"""
    site: str
    """where the encoder reads"""
    encode: Callable[[torch.Tensor], torch.Tensor] = field(repr=False)
    """acts [n, d] -> latent activations [n, width]"""
    quantiles: torch.Tensor = field(repr=False)
    """[width, q] sorted activation quantiles per latent (over tokens where it fired)"""
    k: int = 5
    """latents reported per token"""
    threshold: float | None = None
    """a normalised value above it flags (None: never)"""

    def __call__(self, acts: torch.Tensor) -> torch.Tensor:
        return quantile_rank(self.encode(acts.float()), self.quantiles)  # [n, width]


@torch.no_grad()
def latent_quantiles(encode: Callable[[torch.Tensor], torch.Tensor], acts: torch.Tensor, q: int = 100) -> torch.Tensor:
    """[width, q] quantiles of each latent's non-zero activations over reference acts [n, d] (inf where it never fired)."""
    z = encode(acts.float())  # [n, width]
    levels = torch.linspace(0, 1, q)
    out = torch.full((z.shape[1], q), float("inf"))
    for j in (z > 0).any(0).nonzero(as_tuple=True)[0].tolist():
        v = z[:, j][z[:, j] > 0]
        out[j] = torch.quantile(v, levels)
    return out


def prompt_ids(subject: Subject, prompt: str | list[dict], chat: bool) -> list[int]:
    tok = subject.tokenizer
    if isinstance(prompt, list):
        text = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        return tok(text, add_special_tokens=False)["input_ids"]
    if chat:
        return tok(subject.chat(prompt), add_special_tokens=False)["input_ids"]
    return tok(prompt)["input_ids"]


def read(readers: Sequence, acts: dict[str, torch.Tensor]) -> tuple[dict[str, float], list[str]]:
    """Readings and flags of one token from its activations {site: [1, d]}."""
    readings, flags = {}, []
    for r in readers:
        v = r(acts[r.site])
        if v.ndim == 1:
            items = [(r.name, float(v[0]))]
        else:
            top = v[0].topk(min(getattr(r, "k", 5), v.shape[1]))
            items = [(f"{r.name}:{i}", float(x)) for x, i in zip(top.values.tolist(), top.indices.tolist())]
        for name, x in items:
            readings[name] = x
            if r.threshold is not None and x > r.threshold:
                flags.append(name)
    return readings, flags


@torch.no_grad()
def watch(subject: Subject, prompt: str | list[dict], readers: Sequence = (), max_new_tokens: int = 64,
          chat: bool = True, abort_on: Sequence[str] = (), on_flag: Callable | None = None,
          stop: threading.Event | None = None, oracle_fn: Callable[[list[int]], dict[str, float]] | None = None,
          every: int = 8) -> Iterator[TokenReading]:
    """Generate greedily, yielding each token with its readings as soon as it is decoded.

    abort_on: reader names (or "name:index" latent readings); a flag on one ends generation at that token.
    on_flag(reading) is called for every flagged token. stop.set() ends generation at the next token.
    oracle_fn(ids so far) -> {name: value} is called every `every` tokens; its values join that token's readings.
    """
    tok, model = subject.tokenizer, subject.model
    names = [r.name for r in readers]
    if len(set(names)) != len(names):
        raise ValueError(f"reader names must be distinct; got {names}")
    sites = {r.site: subject.site(r.site) for r in readers}
    ids = prompt_ids(subject, prompt, chat)
    seen: dict[str, torch.Tensor] = {}
    armed = [False]  # only our own decoding steps are read (an oracle_fn may run the same model)

    def keeper(name: str):
        def fn(act: torch.Tensor):  # [1, seq, d]
            if armed[0]:
                seen[name] = act[:, -1].detach().float().cpu()  # [1, d]
            return None
        return fn

    handles = [hook_site(model, site, keeper(name)) for name, site in sites.items()]
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = {tok.eos_token_id, *(gen_eos if isinstance(gen_eos, list) else [gen_eos])} - {None}
    try:
        out = model(input_ids=torch.tensor([ids], device=subject.device), use_cache=True)
        past, nxt = out.past_key_values, int(out.logits[0, -1].argmax())
        text = ""
        for step in range(max_new_tokens):
            if nxt in eos or (stop is not None and stop.is_set()):
                return
            ids.append(nxt)
            seen.clear()
            armed[0] = True
            out = model(input_ids=torch.tensor([[nxt]], device=subject.device), past_key_values=past, use_cache=True)
            armed[0] = False
            past, nxt = out.past_key_values, int(out.logits[0, -1].argmax())
            readings, flags = read(readers, seen)
            if oracle_fn is not None and (step + 1) % every == 0:
                readings.update(oracle_fn(list(ids)))
            full = tok.decode(ids[len(ids) - step - 1 :], skip_special_tokens=True)
            reading = TokenReading(full[len(text) :], len(ids) - 1, readings, flags)
            text = full
            if flags and on_flag is not None:
                on_flag(reading)
            yield reading
            if any(f in abort_on or f.split(":")[0] in abort_on for f in flags):
                return
    finally:
        armed[0] = False
        for h in handles:
            h.remove()


def record(db, run_id: int | None, readings: Sequence[TokenReading]) -> int:
    """Store a generation's token readings in the results database (table monitor_tokens); returns rows written."""
    db.add_monitor_tokens(run_id, [(r.position, r.token, r.readings, r.flags) for r in readings])
    return len(readings)
