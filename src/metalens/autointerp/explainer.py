"""The trained explainer: highlighted windows in, a short explanation out; best-of-k by a simulator.

    ex = TrainedExplainer.load(subject)                   # default/explainer/ merged into a copy
    cands = ex.explain(windows, k=8)                      # windows: [(tokens, values)]
    best = select(sim, cands, select_windows)             # the candidate whose simulation r is best

Prompt (plain text, no chat template): up to `n_active` activating windows cut to `span` tokens around
their strongest token, with the tokens above `mark` x the max shown <<like this>>, then up to
`n_quiet` windows where the feature stays low, then "Explanation:". The adapter is trained (train.py,
task "explainer") to continue with one of the rule's phrasings and a newline.
"""

from __future__ import annotations

from pathlib import Path
import re
from typing import NamedTuple, Sequence

import numpy as np
import torch

from ..io import jsonl_objects
from ..metrics import pearson
from .examples import show_token
from ..adapters import load_lora
from .simulator import DEFAULT_DIR, first_lines

HEADER = "A feature of a language model fires on the tokens marked <<like this>>.\n"
N_ACTIVE, N_QUIET = 3, 1
"""activating and quiet windows the explainer prompt shows (formats.split_windows gives it no more)"""


class Shown(NamedTuple):
    tokens: list[str]
    """window token strings"""
    values: np.ndarray
    """[n] activations"""


def crop(tokens: Sequence[str], values: np.ndarray, span: int) -> tuple[list[str], np.ndarray]:
    """At most `span` tokens around the strongest one."""
    if len(tokens) <= span:
        return list(tokens), np.asarray(values)
    c = int(np.argmax(values))
    s = min(max(0, c - span // 2), len(tokens) - span)
    return list(tokens[s : s + span]), np.asarray(values[s : s + span])


def explainer_prompt(windows: Sequence[Shown], n_active: int = N_ACTIVE, n_quiet: int = N_QUIET, span: int = 16,
                     mark: float = 0.3) -> str:
    """The prompt for a feature given its windows (values in any unit; compared to their max)."""
    top = max((float(np.max(w.values)) for w in windows if len(w.values)), default=0.0)
    act = sorted([w for w in windows if top > 0 and len(w.values) and np.max(w.values) > mark * top],
                 key=lambda w: -float(np.max(w.values)))
    quiet = [w for w in windows if not len(w.values) or np.max(w.values) <= mark * top]
    lines = [HEADER]
    for w in act[:n_active]:
        toks, vals = crop(w.tokens, np.asarray(w.values, np.float64), span)
        text = "".join(f"<<{show_token(t)}>>" if v > mark * top else show_token(t) for t, v in zip(toks, vals))
        lines.append(f"Text: {text.strip()}\n")
    for w in quiet[:n_quiet]:
        toks, _ = crop(w.tokens, np.zeros(len(w.tokens)), span)
        lines.append(f"Quiet: {''.join(show_token(t) for t in toks).strip()}\n")
    return "".join(lines) + "Explanation:"


# ---- training data ----------------------------------------------------------------------------------
def load_explainer_data(path: str | Path) -> list[tuple[list[str], str]]:
    """(explanations, prompt) per feature line of a trainset file."""
    out = []
    for _, obj in jsonl_objects(path):
        wins = [Shown(w["tokens"], np.asarray(w["values"], np.float64)) for w in obj["windows"]]
        out.append((obj["explanations"], explainer_prompt(wins)))
    return out


def explainer_batch(tokenizer, items: Sequence[tuple[list[str], str]], rng: np.random.Generator):
    """(ids [b, s], attention mask [b, s], labels [b, s]: -100 except the explanation and its newline)."""
    rows = []
    for expls, prompt in items:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        t = tokenizer(" " + expls[rng.integers(len(expls))] + "\n", add_special_tokens=False)["input_ids"]
        rows.append((p + t, [-100] * len(p) + t))
    n = max(len(r) for r, _ in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), n), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    labels = torch.full((len(rows), n), -100, dtype=torch.long)
    for b, (r, lab) in enumerate(rows):
        ids[b, : len(r)], mask[b, : len(r)], labels[b, : len(r)] = torch.tensor(r), 1, torch.tensor(lab)
    return ids, mask, labels


def explainer_loss(model, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy on the labelled positions only (the unembedding runs on those rows)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    h = base.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state  # [b, s, d_model]
    sel = labels[:, 1:] != -100  # position j predicts token j + 1
    logits = base.get_output_embeddings()(h[:, :-1][sel])  # [n_target, vocab]
    return torch.nn.functional.cross_entropy(logits.float(), labels[:, 1:][sel])


# ---- use ------------------------------------------------------------------------------------------
def clean(text: str) -> str | None:
    line = text.strip().split("\n")[0].strip().strip(" \"'").rstrip(" .;:,")
    return line or None


def top_examples(windows: Sequence[tuple[Sequence[str], Sequence[float]]], n: int = 3, mark: float = 0.5) -> list[str]:
    """The distinct words (or non-word tokens) whose value is above `mark` x the max, strongest first."""
    from .synthetic import words

    top = max((float(np.max(v)) for _, v in windows if len(v)), default=0.0)
    if top <= 0:
        return []
    best: dict[str, float] = {}
    for toks, vals in windows:
        vals = np.asarray(vals, np.float64)
        units = words(toks) + [(t.strip(), [i]) for i, t in enumerate(toks) if t.strip() and not t.strip()[0].isalnum()]
        for w, idx in units:
            v = float(vals[idx].max())
            if v > mark * top and len(w) <= 24:
                key = w if w[:1].isupper() and len(w) > 1 else w.lower()
                best[key] = max(best.get(key, 0.0), v)
    return sorted(best, key=lambda w: -best[w])[:n]


def examples_phrase(windows: Sequence[tuple[Sequence[str], Sequence[float]]], n: int = 3, mark: float = 0.5) -> str | None:
    """An explanation that names the feature by its strongest examples: "words like A, B or C"
    (top_examples; "the tokens ..." when none is a word)."""
    return listing(top_examples(windows, n, mark))


def listing(ex: Sequence[str]) -> str | None:
    """ "words like A, B or C" for examples (top_examples); "the tokens ..." when none is a word."""
    if not ex:
        return None
    listed = ex[0] if len(ex) == 1 else f"{', '.join(ex[:-1])} or {ex[-1]}"
    return f"words like {listed}" if any(w[:1].isalnum() for w in ex) else f"the tokens {listed}"


CATEGORY_PROMPT = ("apple, banana, orange: fruits\n"
                   "hammer, saw, drill: tools\n"
                   "red, blue, green: colours\n"
                   "tennis, football, golf: sports\n"
                   "happy, angry, sad: emotions\n"
                   "{words}:")
"""few-shot prompt whose continuation names what the listed words have in common (training-family
categories only in the shots)"""


def category_phrase(model: torch.nn.Module, tokenizer, examples: Sequence[str], max_tokens: int = 8) -> str | None:
    """What `model` (the base subject model) writes after CATEGORY_PROMPT for the examples: the category
    they share ("heart, blood, hand" -> "body"), greedy, first line; None when there are fewer than two
    word examples or the answer is not a short phrase, or is one of the examples."""
    ex = [w for w in examples if w[:1].isalnum()]
    if len(ex) < 2:
        return None
    text = first_lines(model, tokenizer, [CATEGORY_PROMPT.format(words=", ".join(ex))], max_tokens)[0]
    text = text.strip().rstrip(".,;")
    if not re.fullmatch(r"[A-Za-z][\w' -]{0,30}", text) or len(text.split()) > 4:
        return None
    return None if text.lower() in {w.lower() for w in ex} else text


class TrainedExplainer:
    """A subject model with an explainer adapter merged in. With `examples`, one of the k candidates
    is examples_phrase() of the windows; with `namer` (the base subject model) as well, one more is
    category_phrase() of the same examples. The best-of-k selection decides whether they win."""

    def __init__(self, model: torch.nn.Module, tokenizer, name: str = "trained", examples: bool = True,
                 namer: torch.nn.Module | None = None):
        self.model, self.tok, self.name, self.examples, self.namer = model, tokenizer, name, examples, namer

    @classmethod
    def load(cls, subject, adapter_dir: str | Path | None = None, examples: bool = True,
             category: bool = True) -> "TrainedExplainer":
        """The subject with the adapter under adapter_dir (default: the shipped one) merged into a copy;
        examples / category: add the examples phrase / the base model's name for its examples."""
        adapter_dir = Path(adapter_dir) if adapter_dir else DEFAULT_DIR / "explainer"
        return cls(load_lora(subject.model, adapter_dir), subject.tokenizer, f"trained:{adapter_dir.name}", examples,
                   subject.model if examples and category else None)

    @torch.no_grad()
    def explain(self, windows: Sequence[tuple[Sequence[str], Sequence[float]]], k: int = 8, temperature: float = 0.7,
                max_tokens: int = 16, seed: int = 0) -> list[str]:
        """Up to k distinct explanations (the greedy one first, then samples; with `examples`, the last
        of the k is the examples phrase, and with `namer` the one before it is the category phrase)."""
        prompt = explainer_prompt([Shown(list(t), np.asarray(v, np.float64)) for t, v in windows])
        ids = self.tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        top = top_examples(windows) if self.examples and k > 1 else []  # examples_phrase's words, found once
        phrase = listing(top)
        name = category_phrase(self.namer, self.tok, top) if phrase and self.namer and k > 2 else None
        extra = [e for e in (name, phrase) if e]
        texts = generate_lines(self.model, self.tok, ids, k - len(extra), temperature, max_tokens, seed)
        found: list[str] = []
        for text in texts + extra:
            e = clean(text)
            if e and e.lower() not in {x.lower() for x in found}:
                found.append(e)
        return found


def generate_lines(model, tokenizer, ids: torch.Tensor, k: int, temperature: float, max_tokens: int,
                   seed: int) -> list[str]:
    """k continuations of the prompt ids [1, n]: row 0 greedy, rows 1.. sampled at `temperature`, each
    decoded and cut where its first line is complete (`clean` reads no further).

    The same texts up to that line end as Hugging Face `generate` (greedy, then k - 1 samples with
    `num_return_sequences` after `torch.manual_seed(seed)`), for less work: the prompt runs through the
    model once (its cache is copied to the k rows), greedy and samples share each decoding step, and
    decoding stops once every row has ended its line or met the end-of-sequence token. The samples use
    the same random numbers (one multinomial draw over the k - 1 sampled rows per step; finished rows
    keep drawing, so the stream does not shift)."""
    from transformers import DynamicCache

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    dev = next(model.parameters()).device
    head = base.get_output_embeddings()
    eos = base.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos), 0)
    cache = DynamicCache(config=base.config)
    h = base.model(input_ids=ids.to(dev), past_key_values=cache, use_cache=True).last_hidden_state[:, -1]  # [1, d]
    logits = head(h).float().expand(k, -1)  # [k, vocab]
    cache.batch_repeat_interleave(k)
    if k > 1:
        torch.manual_seed(seed)
    rows: list[list[int]] = [[] for _ in range(k)]
    done = [False] * k
    for _ in range(max_tokens):
        nxt = logits[:1].argmax(-1)  # [1]
        if k > 1:
            nxt = torch.cat([nxt, torch.multinomial((logits[1:] / temperature).softmax(-1), 1)[:, 0]])
        nxt = nxt.tolist()
        for r, t in enumerate(nxt):
            if done[r]:
                continue
            if t in eos:
                done[r] = True
                continue
            rows[r].append(t)
            done[r] = "\n" in tokenizer.decode(rows[r], skip_special_tokens=True).lstrip()
        if all(done):
            break
        feed = torch.tensor([[pad if d else t] for t, d in zip(nxt, done)], device=dev)  # [k, 1]
        logits = head(base.model(input_ids=feed, past_key_values=cache, use_cache=True).last_hidden_state[:, -1]).float()
    return [tokenizer.decode(r, skip_special_tokens=True) for r in rows]


class PromptExplainer:
    """The prompted explainer (explain.py) on any LLM, behind the same `.explain(windows, k, seed)` call."""

    def __init__(self, llm, temperature: float = 0.8, max_tokens: int = 48):
        self.llm, self.name, self.temperature, self.max_tokens = llm, f"prompt:{llm.name}", temperature, max_tokens

    def explain(self, windows: Sequence[tuple[Sequence[str], Sequence[float]]], k: int = 8, seed: int = 0) -> list[str]:
        from .examples import Window
        from .explain import explain

        wins = [Window(list(t), np.asarray(v, np.float64), i, 0) for i, (t, v) in enumerate(windows)]
        return explain(self.llm, wins, k, self.temperature, self.max_tokens, seed)


def simulation_r(sim, explanation: str, windows: Sequence[tuple[Sequence[str], Sequence[float]]]) -> float | None:
    """Pearson r over all tokens of the windows between simulated and true values (None when undefined)."""
    if not windows:
        return None
    return _r(sim.simulate(explanation, [list(t) for t, _ in windows]), windows)


def _r(preds: Sequence[np.ndarray], windows) -> float | None:
    return pearson(np.concatenate(preds), np.concatenate([np.asarray(v, np.float64) for _, v in windows]))


def select(sim, candidates: Sequence[str], windows) -> tuple[int | None, list[float | None]]:
    """(index of the best candidate by simulation r on `windows`, every candidate's r). A candidate given
    twice is simulated once; a simulator with `simulate_many` simulates all candidates in one batched call."""
    unique = list(dict.fromkeys(candidates))
    if not windows:
        r_of: dict[str, float | None] = {c: None for c in unique}
    elif hasattr(sim, "simulate_many"):
        preds = sim.simulate_many(unique, [list(t) for t, _ in windows])
        r_of = {c: _r(p, windows) for c, p in zip(unique, preds)}
    else:
        r_of = {c: simulation_r(sim, c, windows) for c in unique}
    rs = [r_of[c] for c in candidates]
    defined = [i for i, r in enumerate(rs) if r is not None]
    return (max(defined, key=lambda i: rs[i]) if defined else (0 if candidates else None)), rs


def explainer_from(spec: str, subject):
    """The explainer a spec names: default, prompt, an http(s) URL or an adapter folder (see simulator.resolve)."""
    from .simulator import resolve

    return resolve(spec, subject, "explainer", TrainedExplainer, PromptExplainer)
