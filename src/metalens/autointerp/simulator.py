"""Simulators behind one interface: `simulate(explanation, windows) -> [np.ndarray per window]`.

    TrainedSimulator   a LoRA fine-tune of the subject model (shipped in default/simulator/): ONE forward
                       pass over "Explanation: <text>\\nText:" + the window's tokens; at every window
                       token, the logits of 11 fixed token ids give a distribution over the values
                       0..10 and the prediction is its expected value (Transluce's fine-tuned simulator);
                       `simulate_many(explanations, windows)` scores several explanations in shared batches,
                       each explanation's prompt run once and its cache shared by its windows
    PromptSimulator    the prompted few-shot simulator of simulate.py on any LLM (local or endpoint)

With examples on (an adapter trained with them says so in its adapter.json), the trained simulator
reads "<explanation> (<examples>)": the examples are what the *base* subject model writes after
"Examples of <explanation>:" (few-shot, greedy, `example_words`), once per explanation and cached.
They bring the model's own knowledge of a category's members ("names of countries" -> USA, Canada,
Germany) into the one forward pass; true and foreign explanations are expanded alike.

Window tokens arrive as strings. Each string is re-tokenised on its own (a string the tokenizer would
split gives several sub-tokens, an empty one none) and its value is read at its LAST sub-token (an
empty string reads at the position before it), so predictions align one for one with the strings.
With `piece` on, a long window is read in pieces (PIECE, PIECE_CONTEXT below).
"""

from __future__ import annotations

import json
from pathlib import Path
import re
from typing import NamedTuple, Protocol, Sequence

import numpy as np
import torch

from ..errors import DataError
from ..adapters import load_lora
from ..models import Subject
from .llm import LLM

N_VALUES = 11  # values 0..10
PROMPT_FORMAT = "Explanation: {explanation}\nText:"
DEFAULT_DIR = Path(__file__).parent / "default"
EXAMPLES_PROMPT = ("Examples of fruits: apple, banana, orange, grape, pear\n"
                   "Examples of tools: hammer, saw, drill, wrench, pliers\n"
                   "Examples of colours: red, blue, green, yellow, white\n"
                   "Examples of {explanation}:")
N_EXAMPLES = 5  # examples kept per explanation
PIECE, PIECE_CONTEXT = 16, 8
"""the measured setting of `load(..., piece=PIECE, piece_context=PIECE_CONTEXT)`: a window longer than
PIECE strings is read in pieces of PIECE, each after the PIECE_CONTEXT strings before it (read, not
reported), so no row is longer than the 24-token crops the simulator was trained on
(train.TrainConfig.crop). Off by default: it raised validity a little and lowered explainer recovery
(research/autointerp-trained-scorers.md)"""


class Simulator(Protocol):
    name: str

    def simulate(self, explanation: str, windows: Sequence[Sequence[str]]) -> list[np.ndarray]: ...


class PromptSimulator:
    """The prompted simulator (simulate.py) on an LLM, behind the Simulator interface; values 0..10."""

    def __init__(self, llm: LLM, max_value: int | None = None):
        from .simulate import scale_for

        self.llm, self.name = llm, f"prompt:{llm.name}"
        self.max_value = scale_for(llm) if max_value is None else max_value

    def simulate(self, explanation: str, windows: Sequence[Sequence[str]]) -> list[np.ndarray]:
        from .simulate import simulate

        return [p * (10 / self.max_value) for p in simulate(self.llm, explanation, windows, self.max_value)]


def value_token_ids(tokenizer) -> list[int]:
    """The 11 token ids read for the values 0..10: the digits "0".."9", then "10" if it is one token,
    else "X" (any fixed single token works: the simulator is trained to put its mass there)."""
    ids = []
    for s in [str(v) for v in range(10)] + ["10", "X"]:
        t = tokenizer(s, add_special_tokens=False)["input_ids"]
        if len(t) == 1 and t[0] not in ids:
            ids.append(t[0])
        if len(ids) == N_VALUES:
            return ids
    raise DataError(f"the tokenizer {getattr(tokenizer, 'name_or_path', '?')} has no single tokens for the digits 0..9")


def expected_values(logits: torch.Tensor) -> torch.Tensor:
    """[..., 11] value logits -> [...] expected value sum_v v * softmax(logits)_v."""
    return logits.float().softmax(-1) @ torch.arange(N_VALUES, dtype=torch.float32, device=logits.device)


class Encoded(NamedTuple):
    input_ids: torch.Tensor
    """[batch, seq] right-padded ids"""
    attention_mask: torch.Tensor
    """[batch, seq]"""
    reads: list[list[int]]
    """per row, the position read for each window string"""


class Encoder:
    """Explanation + window strings -> ids and read positions; caches each string's sub-token ids."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.cache: dict[str, list[int]] = {}
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def ids(self, s: str) -> list[int]:
        if s not in self.cache:
            self.cache[s] = self.tok(s, add_special_tokens=False)["input_ids"] if s else []
        return self.cache[s]

    def prefix(self, explanation: str) -> list[int]:
        """The ids of "Explanation: <text>\\nText:" (every row of one explanation starts with them)."""
        return list(self.tok(PROMPT_FORMAT.format(explanation=explanation.strip()), add_special_tokens=False)["input_ids"])

    def window(self, tokens: Sequence[str]) -> tuple[list[int], list[int]]:
        """The window's ids and, per string, the index read among them (-1: the token before the window)."""
        ids: list[int] = []
        reads = []
        for s in tokens:
            if not isinstance(s, str):
                raise DataError(f"window tokens must be strings; got {type(s).__name__} {s!r}")
            ids += self.ids(s)
            reads.append(len(ids) - 1)
        return ids, reads

    def row(self, explanation: str, tokens: Sequence[str]) -> tuple[list[int], list[int]]:
        ids = self.prefix(explanation)
        wids, reads = self.window(tokens)
        return ids + wids, [len(ids) + r for r in reads]

    def batch(self, rows: Sequence[tuple[str, Sequence[str]]]) -> Encoded:
        enc = [self.row(e, t) for e, t in rows]
        n = max(len(i) for i, _ in enc)
        ids = torch.full((len(enc), n), self.pad, dtype=torch.long)
        mask = torch.zeros((len(enc), n), dtype=torch.long)
        for b, (i, _) in enumerate(enc):
            ids[b, : len(i)] = torch.tensor(i)
            mask[b, : len(i)] = 1
        return Encoded(ids, mask, [r for _, r in enc])


def value_logits(model: torch.nn.Module, enc: Encoded, value_ids: Sequence[int]) -> list[torch.Tensor]:
    """Per row, [n_strings, 11] logits of the value tokens at the read positions (one forward pass)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    dev = next(model.parameters()).device
    h = base.model(input_ids=enc.input_ids.to(dev), attention_mask=enc.attention_mask.to(dev),
                   use_cache=False).last_hidden_state  # [batch, seq, d_model]
    w = base.get_output_embeddings().weight[list(value_ids)]  # [11, d_model]
    return [h[b, r] @ w.T for b, r in enumerate(enc.reads)]  # only the 11 value rows of the unembedding


def shared_prefix_value_logits(model: torch.nn.Module, prefixes: Sequence[Sequence[int]],
                                rows: Sequence[tuple[int, list[int], list[int]]], value_ids: Sequence[int],
                                pad: int, batch_size: int = 8) -> list[torch.Tensor]:
    """`value_logits` for rows given as (index of their prefix, window ids, reads counted in the window; -1
    is the prefix's last token): every prefix runs once (one padded batch) and its cache is shared by its
    rows, which run `batch_size` at a time. The same numbers as `value_logits` on the full rows up to float
    rounding: each row sees the same tokens at the same positions, pads are masked out."""
    import copy

    from transformers import DynamicCache

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    dev = next(model.parameters()).device
    lens = [len(p) for p in prefixes]
    n_pre = max(lens)
    ids = torch.full((len(prefixes), n_pre), pad, dtype=torch.long)
    mask = torch.zeros((len(prefixes), n_pre), dtype=torch.long)
    for i, p in enumerate(prefixes):
        ids[i, : len(p)], mask[i, : len(p)] = torch.tensor(list(p), dtype=torch.long), 1
    cache = DynamicCache(config=base.config)
    h_pre = base.model(input_ids=ids.to(dev), attention_mask=mask.to(dev), past_key_values=cache,
                       use_cache=True).last_hidden_state  # [n_prefixes, n_pre, d_model]
    last = h_pre[torch.arange(len(prefixes)), torch.tensor(lens) - 1]  # [n_prefixes, d_model]
    w = base.get_output_embeddings().weight[list(value_ids)]  # [11, d_model]: only the value rows of the unembedding
    out: list[torch.Tensor] = []
    for s in range(0, len(rows), batch_size):
        chunk = rows[s : s + batch_size]
        which = [p for p, _, _ in chunk]
        h = last[which][:, None]  # [b, 1, d_model]
        n = max(len(i) for _, i, _ in chunk)
        if n:
            win = torch.full((len(chunk), n), pad, dtype=torch.long)
            wmask = torch.zeros((len(chunk), n), dtype=torch.long)
            for b, (_, i, _) in enumerate(chunk):
                win[b, : len(i)], wmask[b, : len(i)] = torch.tensor(i, dtype=torch.long), 1
            pos = torch.tensor([lens[p] for p in which])[:, None] + torch.arange(n)  # [b, n]: right after the prefix
            sub = copy.deepcopy(cache)
            sub.batch_select_indices(torch.tensor(which, device=dev))
            h_win = base.model(input_ids=win.to(dev), attention_mask=torch.cat([mask[which], wmask], 1).to(dev),
                               position_ids=pos.to(dev), past_key_values=sub, use_cache=True).last_hidden_state
            h = torch.cat([h, h_win], 1)  # [b, 1 + n, d_model]: index 0 is the prefix's last token
        out += [h[b, [r + 1 for r in reads]] @ w.T for b, (_, _, reads) in enumerate(chunk)]
    return out


def parse_examples(text: str, n: int = N_EXAMPLES) -> list[str]:
    """The first n distinct comma-separated items of a continuation's first line; [] when fewer than
    two items look like words (the continuation is a sentence or a quote, not a list)."""
    items: list[str] = []
    for w in text.split("\n")[0].split(","):
        w = w.strip().strip(".")
        if w and re.fullmatch(r"[\w' -]{1,30}", w) and w.lower() not in {x.lower() for x in items}:
            items.append(w)
    return items[:n] if len(items) >= 2 else []


class _LineEnded:
    """Stopping criterion: a row is done once its new tokens (after `width`) hold a newline."""

    def __init__(self, tokenizer, width: int):
        self.tok, self.width = tokenizer, width

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        done = ["\n" in self.tok.decode(r[self.width :], skip_special_tokens=True) for r in input_ids.tolist()]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def first_lines(model: torch.nn.Module, tokenizer, prompts: Sequence[str], max_tokens: int = 20,
                batch_size: int = 16) -> list[str]:
    """What `model` writes after each prompt up to its first newline: greedy, batched with left padding
    (the same text as one prompt at a time); decoding stops once every row of a batch has a newline."""
    from transformers import StoppingCriteriaList

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    dev = next(model.parameters()).device
    out: list[str] = []
    for b in range(0, len(prompts), batch_size):
        ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts[b : b + batch_size]]
        width = max(map(len, ids))
        x = torch.tensor([[pad] * (width - len(r)) + r for r in ids], device=dev)  # [b, width]
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids], device=dev)
        gen = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=max_tokens, do_sample=False,
                             pad_token_id=pad, temperature=None, top_p=None, top_k=None,
                             stopping_criteria=StoppingCriteriaList([_LineEnded(tokenizer, width)]))  # [b, width + new]
        out += [tokenizer.decode(g[width:], skip_special_tokens=True).split("\n")[0] for g in gen]
    return out


def example_texts(model: torch.nn.Module, tokenizer, explanations: Sequence[str], max_tokens: int = 20,
                  batch_size: int = 16) -> list[str]:
    """What `model` writes after EXAMPLES_PROMPT, per explanation, up to its first newline (all that
    parse_examples reads): `first_lines`."""
    return first_lines(model, tokenizer, [EXAMPLES_PROMPT.format(explanation=e) for e in explanations], max_tokens,
                       batch_size)


def example_words(model: torch.nn.Module, tokenizer, explanations: Sequence[str], n: int = N_EXAMPLES) -> list[list[str]]:
    """The base model's examples of each explanation (`example_texts` read by `parse_examples`)."""
    return [parse_examples(t, n) for t in example_texts(model, tokenizer, explanations)]


NAMES_EXAMPLES = re.compile(r"^\s*(words like|the words?|the tokens?|the symbols?|tokens that are)\b|[\"“(]", re.I)
"""an explanation that already names its examples ("words like A or B", "the tokens ( or ;", quotes, a
parenthesis) is read as it is: the base model's examples of a list are a guess at what the list means"""


def with_examples(explanation: str, examples: Sequence[str]) -> str:
    """The explanation as the simulator reads it with examples: "<explanation> (a, b, c)"; as it is when
    it names its own (NAMES_EXAMPLES) or has none."""
    return f"{explanation} ({', '.join(examples)})" if examples and not NAMES_EXAMPLES.search(explanation) else explanation


class TrainedSimulator:
    """A trained simulator: a subject model with a simulator adapter merged in. With `examples` (a dict
    explanation -> example words, filled from `expander`, the base model, for explanations it lacks),
    every explanation is read as with_examples(explanation, its examples)."""

    def __init__(self, model: torch.nn.Module, tokenizer, name: str = "trained", batch_size: int = 8,
                 examples: dict[str, list[str]] | None = None, expander: torch.nn.Module | None = None,
                 piece: int = 0, piece_context: int = 0, select_plain: bool = False):
        self.model, self.name, self.batch_size = model, name, batch_size
        self.piece, self.piece_context = piece, piece_context
        self.tokenizer, self.examples, self.expander = tokenizer, examples, expander
        self.select_plain, self._plain = select_plain, None
        self.encoder = Encoder(tokenizer)
        self.value_ids = value_token_ids(tokenizer)

    @classmethod
    def load(cls, subject: Subject, adapter_dir: str | Path | None = None, batch_size: int = 8,
             examples: bool | None = None, piece: int = 0, piece_context: int = 0,
             select_plain: bool | None = None) -> "TrainedSimulator":
        """The subject with the adapter under adapter_dir (default: the shipped one) merged into a copy.
        examples: read explanations with the base model's examples; select_plain: with examples on,
        best-of-k selection reads plainly (`selector`); None: as the adapter's adapter.json says
        ("examples", default false; "select_plain", default true);
        piece, piece_context: windows longer than `piece` strings are read in pieces (0: whole)."""
        adapter_dir = Path(adapter_dir) if adapter_dir else DEFAULT_DIR / "simulator"
        model = load_lora(subject.model, adapter_dir)
        cfg = json.loads((adapter_dir / "adapter.json").read_text())
        examples = bool(cfg.get("examples", False)) if examples is None else examples
        select_plain = bool(cfg.get("select_plain", True)) if select_plain is None else select_plain
        name = (f"trained:{adapter_dir.name}" + ("+examples" if examples else "")
                + ("/select-plain" if examples and select_plain else "")
                + (f"+pieces{piece}/{piece_context}" if piece else ""))
        return cls(model, subject.tokenizer, name, batch_size, {} if examples else None,
                   subject.model if examples else None, piece, piece_context, select_plain)

    def selector(self) -> "TrainedSimulator":
        """The simulator that picks the best of k candidates: itself, or, with examples on and
        `select_plain`, the same weights reading plainly (cheaper: no examples written for the k
        candidates; and measured to pick better, research/autointerp-trained-scorers.md)."""
        if self.examples is None or not self.select_plain:
            return self
        if self._plain is None:
            self._plain = TrainedSimulator(self.model, self.tokenizer, self.name + ":plain", self.batch_size,
                                           piece=self.piece, piece_context=self.piece_context)
        return self._plain

    def read_as(self, explanations: Sequence[str]) -> list[str]:
        """The explanations as the simulator reads them (with their examples when those are on)."""
        if self.examples is None:
            return list(explanations)
        missing = sorted({e for e in explanations if e not in self.examples and not NAMES_EXAMPLES.search(e)})
        if missing:
            if self.expander is None:
                raise DataError(f"no examples for {missing[0]!r} and no base model to write them")
            self.examples.update(zip(missing, example_words(self.expander, self.tokenizer, missing)))
        return [with_examples(e, self.examples.get(e, [])) for e in explanations]

    def simulate(self, explanation: str, windows: Sequence[Sequence[str]]) -> list[np.ndarray]:
        return self.simulate_many([explanation], windows)[0]

    @torch.no_grad()
    def simulate_many(self, explanations: Sequence[str], windows: Sequence[Sequence[str]]) -> list[list[np.ndarray]]:
        """`simulate(e, windows)` for every e, batched: each explanation's prompt runs once and is shared by
        its windows, windows of several explanations share a batch, rows are sorted by length (less padding)."""
        explanations = self.read_as(explanations)
        wins, owner = [], []  # the rows' (ids, reads) and, per row, (window index, its first string)
        for j, w in enumerate(windows):
            step = self.piece if 0 < self.piece < len(w) else max(len(w), 1)  # one row unless w is long
            for start in range(0, max(len(w), 1), step):
                lo = max(0, start - self.piece_context)
                ids, reads = self.encoder.window(w[lo : start + step])
                wins.append((ids, reads[start - lo :]))
                owner.append((j, start))
        out = [[np.zeros(len(w)) for w in windows] for _ in explanations]
        group = max(1, self.batch_size)
        for g in range(0, len(explanations), group):
            prefixes = [self.encoder.prefix(e) for e in explanations[g : g + group]]
            rows = sorted([(p, j) for p in range(len(prefixes)) for j in range(len(wins))],
                          key=lambda pj: len(wins[pj[1]][0]))
            logits = shared_prefix_value_logits(self.model, prefixes, [(p, *wins[j]) for p, j in rows],
                                                self.value_ids, self.encoder.pad, self.batch_size)
            for (p, j), lg in zip(rows, logits):
                w, start = owner[j]
                out[g + p][w][start : start + len(lg)] = expected_values(lg).cpu().numpy()
        return out


def selector_of(simulator):
    """The simulator best-of-k selection uses: `simulator.selector()` where it has one, else itself."""
    return simulator.selector() if hasattr(simulator, "selector") else simulator


def shipped_fits(subject: Subject, which: str) -> bool:
    """Whether the shipped adapter default/<which>/ exists and was trained on this subject's model."""
    cfg = DEFAULT_DIR / which / "adapter.json"
    return cfg.is_file() and json.loads(cfg.read_text()).get("base_model") == subject.name


def endpoint_llm(url: str):
    from .llm import EndpointConfig, EndpointLLM

    return EndpointLLM(EndpointConfig(base_url=url))


def resolve(spec: str, subject: Subject, which: str, trained, prompted):
    """The scorer a spec names: "default" (the shipped trained adapter default/<which>/, or the prompted
    one on a model it was not trained for), "prompt" (prompted, local model), an http(s) URL (prompted,
    OpenAI-compatible endpoint) or an adapter folder. `trained` has .load(subject[, dir]); `prompted` takes an LLM."""
    from .llm import LocalLLM

    if spec == "default":
        return trained.load(subject) if shipped_fits(subject, which) else prompted(LocalLLM(subject))
    if spec == "prompt":
        return prompted(LocalLLM(subject))
    if spec.startswith(("http://", "https://")):
        return prompted(endpoint_llm(spec))
    if Path(spec).is_dir():
        return trained.load(subject, spec)
    raise DataError(f"{which} {spec!r}: expected default, prompt, an http(s):// URL or an adapter folder")


def simulator_from(spec: str, subject: Subject) -> Simulator:
    """The simulator a spec names (see `resolve`)."""
    return resolve(spec, subject, "simulator", TrainedSimulator, PromptSimulator)
