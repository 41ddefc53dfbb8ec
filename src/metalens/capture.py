"""Read activations: `capture(subject, texts, sites) -> Activations`.

Batched and padding-aware (padding rows never come back), deterministic, and the forward pass
stops right after the deepest requested block, so reading layer 7 of 30 costs ~8 blocks.
An empty text gives no rows (it keeps its index: the texts after it keep theirs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal, NamedTuple, Sequence

import torch
from tqdm.auto import tqdm

from .errors import DataError, DataTypeError
from .models import Subject
from .sites import Site, hook_site

Positions = Literal["all", "last"] | slice | int  # every token, the last, a slice of each text's tokens, one index


@dataclass
class Activations:
    """Rows of activations with where each came from.

    acts[site] is [n_rows, d]; row i is token `token_ids[i]` at `positions[i]` of text `text_idx[i]`.
    """

    acts: dict[str, torch.Tensor]
    token_ids: torch.Tensor  # [n_rows] long
    text_idx: torch.Tensor  # [n_rows] long, index into the texts given to capture
    positions: torch.Tensor  # [n_rows] long, token position inside that text

    def __getitem__(self, site: str) -> torch.Tensor:
        if site not in self.acts:
            raise KeyError(f"site {site!r} was not captured; captured: {sorted(self.acts)}")
        return self.acts[site]

    def __len__(self) -> int:
        return self.token_ids.shape[0]

    @property
    def sites(self) -> list[str]:
        return list(self.acts)

    def select(self, mask: torch.Tensor) -> "Activations":
        """Rows where mask [n_rows] is True (or the given row indices)."""
        return Activations(
            {s: a[mask] for s, a in self.acts.items()}, self.token_ids[mask], self.text_idx[mask], self.positions[mask]
        )

    @staticmethod
    def cat(parts: Sequence["Activations"]) -> "Activations":
        return Activations(
            {s: torch.cat([p.acts[s] for p in parts]) for s in parts[0].acts},
            torch.cat([p.token_ids for p in parts]),
            torch.cat([p.text_idx for p in parts]),
            torch.cat([p.positions for p in parts]),
        )


class _Stop(Exception):
    """Raised by a hook after the deepest site: the rest of the forward pass is not needed."""


def tokenize(subject: Subject, texts: Sequence[str], max_length: int | None, add_special_tokens: bool = True):
    """Right-padded batch: input_ids, attention_mask [batch, seq]."""
    tok = subject.tokenizer
    tok.padding_side = "right"
    return tok(
        list(texts),
        return_tensors="pt",
        padding=True,
        truncation=max_length is not None,
        max_length=max_length,
        add_special_tokens=add_special_tokens,
    )


def _keep_mask(attention_mask: torch.Tensor, positions: Positions) -> torch.Tensor:
    """[batch, seq] bool: the rows to keep, chosen among each text's real (unpadded) tokens."""
    real = attention_mask.bool()  # [batch, seq]
    if positions == "all":
        return real
    lengths = real.sum(1)  # [batch]
    keep = torch.zeros_like(real)
    for b, n in enumerate(lengths.tolist()):
        if positions == "last":
            idx = [n - 1] if n else []
        elif isinstance(positions, int):
            idx = [positions % n] if -n <= positions < n else []
        elif isinstance(positions, slice):
            idx = list(range(n))[positions]
        else:
            raise ValueError(f"positions must be 'all', 'last', an int or a slice; got {positions!r}")
        keep[b, idx] = True
    return keep


def _batches(keep: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    for start in range(0, len(keep), batch_size):
        yield list(keep[start : start + batch_size])


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_capture_args(texts, batch_size: int, max_length: int | None, positions: Positions) -> None:
    """DataError unless texts is a list of strings and the numbers are in range (names the value)."""
    if isinstance(texts, str):
        raise DataTypeError("texts must be a list of strings, not one string: wrap it as [text]")
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise DataTypeError(f"text {bad} is a {type(texts[bad]).__name__}, not a string")
    if not _is_int(batch_size) or batch_size < 1:
        raise DataError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if max_length is not None and (not _is_int(max_length) or max_length < 1):
        raise DataError(f"max_length must be an integer >= 1 (or None: no truncation), got {max_length!r}")
    if not (positions in ("all", "last") or _is_int(positions) or isinstance(positions, slice)):
        raise DataError(f"positions must be 'all', 'last', an int or a slice, got {positions!r}")


@torch.no_grad()
def capture(
    subject: Subject,
    texts: Sequence[str],
    sites: Sequence[str] | str,
    batch_size: int = 16,
    max_length: int | None = 128,
    positions: Positions = "all",
    add_special_tokens: bool = True,
    dtype: torch.dtype = torch.float32,
    progress: bool | None = None,
) -> Activations:
    """Run the subject on texts and return the activations at the sites (on CPU, in `dtype`)."""
    if isinstance(sites, str):
        sites = [sites]
    check_capture_args(texts, batch_size, max_length, positions)
    if not sites:
        raise DataError("no site to capture: give at least one, e.g. resid.3")
    parsed: list[Site] = [subject.site(s) for s in sites]
    names = [str(s) for s in parsed]
    deepest = max(s.layer for s in parsed)
    model = subject.model
    if progress is None:
        progress = len(texts) > 4 * batch_size

    seen: dict[str, torch.Tensor] = {}

    def recorder(name: str):
        def fn(act: torch.Tensor):
            seen[name] = act
            return None

        return fn

    def stopper(act: torch.Tensor):
        raise _Stop

    handles = [hook_site(model, s, recorder(n)) for s, n in zip(parsed, names)]
    # registered after the recorders, so on the deepest block they run first
    handles.append(hook_site(model, Site(deepest, "resid"), stopper))
    parts: list[Activations] = []
    nonempty = [i for i, t in enumerate(texts) if t]
    try:
        for idx in tqdm(list(_batches(nonempty, batch_size)), desc="capture", disable=not progress):
            enc = tokenize(subject, [texts[i] for i in idx], max_length, add_special_tokens)
            ids = enc["input_ids"].to(subject.device)  # [batch, seq]
            mask = enc["attention_mask"].to(subject.device)  # [batch, seq]
            if ids.shape[1] == 0:
                continue  # nothing to read (texts that tokenize to no tokens)
            seen.clear()
            try:
                model(input_ids=ids, attention_mask=mask, use_cache=False)
            except _Stop:
                pass
            keep = _keep_mask(mask.cpu(), positions)  # [batch, seq]
            b_idx, p_idx = keep.nonzero(as_tuple=True)  # [n_rows] each
            parts.append(
                Activations(
                    {n: seen[n][keep.to(seen[n].device)].to("cpu", dtype) for n in names},  # [n_rows, d]
                    ids.cpu()[keep],
                    torch.as_tensor(idx, dtype=torch.long)[b_idx],
                    p_idx,
                )
            )
    finally:
        for h in handles:
            h.remove()
    if not parts:
        return Activations({n: torch.empty(0, subject.width(n), dtype=dtype) for n in names}, *(torch.empty(0, dtype=torch.long),) * 3)
    return Activations.cat(parts)


# ---- contexts: a text or chat messages, as the subject reads them, and the span of it to read --------------
class Rendered(NamedTuple):
    """A context rendered for the subject."""

    text: str
    """the text the subject reads, with the model's leading special tokens (a chat template writes its own)"""
    ids: list[int]
    """its token ids (tokenised without adding special tokens again)"""
    readable: int
    """the first position that may be read: after the leading special tokens, or after a system message"""


def bos_prefix(tokenizer) -> str:
    """The special tokens the tokenizer puts before a plain text (Gemma's '<bos>'; '' for SmolLM2), as text."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    k = len(full) - len(plain)
    return tokenizer.decode(full[:k]) if k > 0 and full[k:] == plain else ""


def chat_text(tokenizer, context) -> str:
    """A context as plain text: a string as is, chat messages through the chat template."""
    if isinstance(context, str):
        return context
    return tokenizer.apply_chat_template(context, tokenize=False, add_generation_prompt=False)


def render_context(tokenizer, context) -> Rendered:
    """A text (the model's leading special tokens added) or chat messages (template applied, the system message
    masked from reading). A context with nothing to read is a DataError."""
    if isinstance(context, str):
        prefix = bos_prefix(tokenizer)
        ids = tokenizer(prefix + context, add_special_tokens=False)["input_ids"]
        readable = len(tokenizer(prefix, add_special_tokens=False)["input_ids"]) if prefix else 0
        return Rendered(prefix + context, ids, readable)
    text = chat_text(tokenizer, context)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    readable = 0
    if context and context[0]["role"] == "system":
        readable = len(tokenizer(chat_text(tokenizer, context[:1]), add_special_tokens=False)["input_ids"])
    if readable >= len(ids):
        raise DataError("a chat context needs at least one message after the system message to read")
    return Rendered(text, ids, readable)


def read_span(read, n: int, readable: int = 0) -> slice:
    """The positions `read` ("all", "last", or (start, end) over the readable tokens) selects in a context of n
    tokens whose first `readable` are not readable; an empty selection is a DataError."""
    m = n - readable
    if m <= 0:
        raise DataError(f"the context has no readable tokens ({n} tokens, {readable} before the readable part)")
    if read == "all":
        sl = slice(0, m)
    elif read == "last":
        sl = slice(m - 1, m)
    else:
        start, end = read
        idx = range(m)[slice(start, end)]
        if len(idx) == 0:
            raise DataError(f"read {list(read)!r} selects no tokens of a context with {m} readable tokens")
        sl = slice(idx.start, idx.stop)
    return slice(readable + sl.start, readable + sl.stop)


def context_limit(subject: Subject) -> int | None:
    """The most tokens the subject can read at once (its config's max_position_embeddings), if it says."""
    cfg = subject.model.config
    n = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    return int(n) if n else None
