"""Soft tokens: read activations from the subject and inject them into the oracle's prompt.

Oracle prompt (inside the chat template):  "Layer: {L}\\n" + K placeholder tokens + "\\n" + question.
A hook on the output of block `inject_layer` (default 1) edits each placeholder position's residual h:
  add:     h + scale * |h| * v / |v|      (norm-matched addition, Activation Oracles)
  replace: scale * v                       (LatentQA / SelfIE)
An oracle whose width differs from the subject's maps v through a learned `Projection` first.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, NamedTuple, Sequence

import torch
from torch import nn

from ..capture import capture, context_limit, read_span, render_context
from ..models import Subject
from ..sites import Site, hook_site
from .tasks import Example, OracleDataError

MARK = "\x00ACTS\x00"
INJECT_MODES = ("add", "replace")


def placeholder_id(tokenizer) -> int:
    """The placeholder token: ' ?' if it is one token (as in Activation Oracles), else '?'."""
    for text in (" ?", "?"):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            return ids[0]
    raise OracleDataError("the tokenizer has no single-token placeholder (' ?' or '?')")


@torch.no_grad()
def read_vectors(subject: Subject, examples: Sequence[Example], layers: Sequence[int], batch_size: int = 16,
                 max_tokens: int | None = None) -> list[torch.Tensor]:
    """Residual stream after block layers[i] at the read positions of example i: list of [k_i, d].

    The whole context is read (never cut): a context longer than `max_tokens` (default: the subject's
    max_position_embeddings) is an OracleDataError naming its length and the limit.
    Run it with any oracle adapter disabled (`with peft_model.disable_adapter():`).
    """
    tok = subject.tokenizer
    limit = max_tokens if max_tokens is not None else context_limit(subject)
    toks = [render_context(tok, e.context) for e in examples]
    for i, ct in enumerate(toks):
        if not ct.ids:
            raise OracleDataError(f"context {i} is empty (no tokens): give the text the subject should read")
        if limit is not None and len(ct.ids) > limit:
            raise OracleDataError(
                f"context {i} is {len(ct.ids)} tokens, more than the {limit} the subject can read "
                f"({'max_tokens' if max_tokens is not None else 'max_position_embeddings of its config'}); "
                "shorten the context (only the read tokens are injected, but the subject reads all of them), "
                "or raise the limit with read_vectors(..., max_tokens=N)")
    if len(layers) != len(examples):
        raise OracleDataError(f"{len(layers)} layers for {len(examples)} examples")
    layers = [subject.site(f"resid.{layer}").layer for layer in layers]  # negative: from the end; SiteError if bad
    texts = [ct.text for ct in toks]
    sites = sorted({f"resid.{layer}" for layer in layers})
    acts = capture(subject, texts, sites, batch_size=batch_size, max_length=None, add_special_tokens=False,
                   progress=False)
    out = []
    for i, (e, ct, layer) in enumerate(zip(examples, toks, layers)):
        rows = (acts.text_idx == i).nonzero(as_tuple=True)[0]  # this text's rows, in position order
        n = len(rows)
        if n != len(ct.ids):
            raise OracleDataError(f"context {i} tokenized to {len(ct.ids)} ids but the subject read {n}")
        out.append(acts[f"resid.{layer}"][rows[read_span(e.read, n, ct.readable)]])  # [k, d]
    return out


def prompt_ids(tokenizer, layer: int, n_vectors: int, question: str, system: str | None = "") -> tuple[list, list]:
    """Token ids of the oracle prompt (ending at the assistant turn) and the placeholder positions."""
    user = f"Layer: {layer}\n{MARK}\n{question}"
    msgs = ([{"role": "system", "content": system}] if system is not None else []) + [{"role": "user", "content": user}]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    else:
        text = user + "\nAnswer:"
    before, after = text.split(MARK)
    a = tokenizer(before, add_special_tokens=False)["input_ids"]
    b = tokenizer(after, add_special_tokens=False)["input_ids"]
    return a + [placeholder_id(tokenizer)] * n_vectors + b, list(range(len(a), len(a) + n_vectors))


class Batch(NamedTuple):
    input_ids: torch.Tensor  # [batch, seq]
    attention_mask: torch.Tensor  # [batch, seq]
    label_mask: torch.Tensor  # [batch, seq] True on answer tokens (the targets)
    slot_mask: torch.Tensor  # [batch, seq] True on placeholder positions
    prompt_len: torch.Tensor  # [batch] tokens before the answer


def encode(tokenizer, prompts: Sequence[tuple[list, list]], answers: Sequence[str] | None = None,
           device: torch.device | str = "cpu") -> Batch:
    """Right-padded batch of prompt (+ answer + end-of-turn) sequences."""
    eos = tokenizer.eos_token_id
    rows, labels, slots, plen = [], [], [], []
    for i, (ids, pos) in enumerate(prompts):
        ans = [] if answers is None else tokenizer(answers[i], add_special_tokens=False)["input_ids"] + [eos]
        rows.append(ids + ans)
        labels.append([False] * len(ids) + [True] * len(ans))
        slots.append(pos)
        plen.append(len(ids))
    s = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    input_ids = torch.full((len(rows), s), pad, dtype=torch.long)
    attn = torch.zeros(len(rows), s, dtype=torch.long)
    lab = torch.zeros(len(rows), s, dtype=torch.bool)
    slot = torch.zeros(len(rows), s, dtype=torch.bool)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.tensor(r)
        attn[i, : len(r)] = 1
        lab[i, : len(r)] = torch.tensor(labels[i])
        slot[i, slots[i]] = True
    dev = torch.device(device)
    return Batch(input_ids.to(dev), attn.to(dev), lab.to(dev), slot.to(dev), torch.tensor(plen, device=dev))


class Projection(nn.Module):
    """Learned linear map from the subject's width to the oracle's (Meta-Models); identity-like init."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.linear = nn.Linear(d_in, d_out, bias=False)
        with torch.no_grad():
            w = torch.zeros(d_out, d_in)
            n = min(d_in, d_out)
            w[:n, :n] = torch.eye(n)
            self.linear.weight.copy_(w + 0.01 * torch.randn(d_out, d_in))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.linear(v)


def norm_matched_add(h: torch.Tensor, v: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """h + scale * |h| * v / |v| row-wise: h, v [n, d]."""
    return h + scale * h.norm(dim=-1, keepdim=True) * v / v.norm(dim=-1, keepdim=True).clamp_min(1e-6)


@contextmanager
def inject(model: nn.Module, vectors: torch.Tensor, slot_mask: torch.Tensor, layer: int = 1, mode: str = "add",
           scale: float = 1.0, projection: nn.Module | None = None) -> Iterator[None]:
    """Edit the output of block `layer` at slot_mask [batch, seq] with vectors [n_slots, d] (row-major order).

    Applies only to a forward pass whose [batch, seq] equals slot_mask's shape (the prefill of a
    generate() call), so later cached decoding steps pass through untouched.
    """
    if mode not in INJECT_MODES:
        raise ValueError(f"inject mode must be one of {INJECT_MODES}, got {mode!r}")
    if int(slot_mask.sum()) != vectors.shape[0]:
        raise ValueError(f"{vectors.shape[0]} vectors for {int(slot_mask.sum())} placeholder positions")

    def fn(act: torch.Tensor):  # [batch, seq, d]
        if tuple(act.shape[:2]) != tuple(slot_mask.shape):
            return None
        mask = slot_mask.to(act.device)
        v = vectors.to(act.device, act.dtype)
        if projection is not None:
            v = projection(v)
        h = act[mask]  # [n_slots, d]
        new = norm_matched_add(h, v, scale) if mode == "add" else scale * v
        out = act.clone()
        out[mask] = new.to(act.dtype)
        return out

    handle = hook_site(model, Site(layer, "resid"), fn)
    try:
        yield
    finally:
        handle.remove()
