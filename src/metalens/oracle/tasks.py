"""Oracle examples: one JSONL format for training, evaluation and users, and builders for it.

One example per line:
    {"context": str | [{"role": ..., "content": ...}, ...],   # what the subject reads
     "read": "last" | "all" | [start, end],                   # which context tokens become soft tokens
     "question": str, "answer": str,
     "choices": ["Yes", "No"],                                 # optional: scored by P(choice)
     "task": str}                                              # optional, default "custom"

`read` counts tokens of the context as the subject's tokenizer splits it (chat contexts are
rendered with the chat template first); [start, end] is a Python slice (end exclusive, negative
counts from the end, null = to the end). A chat context never exposes its system message's tokens
(LatentQA masks them so the oracle cannot read the instruction back).

Builders take a data directory shaped like ../shared/data/ao (see its README); nothing is
downloaded and the package never needs that directory at run time.
"""

from __future__ import annotations

import csv
import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import DataError
from ..io import jsonl_rows
from typing import Iterable, Sequence

Context = str | list  # a text, or chat messages [{"role", "content"}]
READ_WORDS = ("last", "all")


class OracleDataError(DataError):
    """Oracle examples, settings or data files that are malformed."""


@dataclass(frozen=True)
class Example:
    """One question about the subject's activations on a context."""

    context: Context
    """the text (or chat messages) the subject reads"""
    question: str
    """asked of the oracle"""
    answer: str = ""
    """the expected answer (training target / label)"""
    read: str | tuple = "all"
    """which context tokens are injected: "last" | "all" | (start, end)"""
    choices: tuple | None = None
    """optional answer options; evaluation scores P(each) and the first is the positive class"""
    task: str = "custom"
    """task name (per-task metrics)"""

    def to_json(self) -> dict:
        d = asdict(self)
        d["read"] = list(self.read) if isinstance(self.read, tuple) else self.read
        d["choices"] = list(self.choices) if self.choices else None
        if d["choices"] is None:
            del d["choices"]
        return d


def _check(obj, where: str) -> Example:
    if not isinstance(obj, dict):
        raise OracleDataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key in ("context", "question"):
        if key not in obj:
            raise OracleDataError(f"{where}: missing field {key!r} (required: context, question; optional: answer, read, choices, task)")
    ctx = obj["context"]
    if isinstance(ctx, list):
        for m in ctx:
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise OracleDataError(f"{where}: 'context' as a list must hold chat messages {{'role': str, 'content': str}}, got {m!r}")
    elif not isinstance(ctx, str):
        raise OracleDataError(f"{where}: 'context' must be a string or a list of chat messages, got {type(ctx).__name__}")
    if not ctx or (isinstance(ctx, str) and not ctx.strip()):
        raise OracleDataError(f"{where}: 'context' is empty: give the text (or chat messages) the subject reads")
    for key in ("question", "answer", "task"):
        if key in obj and not isinstance(obj[key], str):
            raise OracleDataError(f"{where}: {key!r} must be a string, got {type(obj[key]).__name__} {obj[key]!r}")
    read = obj.get("read", "all")
    if isinstance(read, tuple):
        read = list(read)
    if isinstance(read, list):
        if len(read) != 2 or not all(r is None or (isinstance(r, int) and not isinstance(r, bool)) for r in read):
            raise OracleDataError(f"{where}: 'read' as a list must be [start, end] integers (end may be null), got {read!r}")
        read = tuple(read)
    elif read not in READ_WORDS:
        raise OracleDataError(f"{where}: 'read' must be 'last', 'all' or [start, end], got {read!r}")
    choices = obj.get("choices")
    if choices is not None:
        if not (isinstance(choices, (list, tuple)) and len(choices) >= 2
                and all(isinstance(c, str) and c.strip() for c in choices)):
            raise OracleDataError(f"{where}: 'choices' must be a list of at least two non-empty strings, got {choices!r}")
        if len(set(choices)) != len(choices):
            raise OracleDataError(f"{where}: 'choices' repeats an option: {choices!r}")
        choices = tuple(choices)
    return Example(ctx, obj["question"], obj.get("answer", ""), read, choices, obj.get("task", "custom"))


def example_from_dict(obj: dict, where: str = "example") -> Example:
    return _check(obj, where)


def load_jsonl(path: str | os.PathLike) -> list[Example]:
    """Read and validate a JSONL file; a bad line raises OracleDataError naming `path:line`."""
    path = Path(path)
    if not path.exists():
        raise OracleDataError(f"examples file {str(path)!r} does not exist")
    return [_check(obj, where) for where, obj in jsonl_rows(path)]


def save_jsonl(examples: Iterable[Example], path: str | os.PathLike) -> Path:
    from ..io import atomic_write_bytes

    path = Path(path)
    text = "".join(json.dumps(e.to_json(), ensure_ascii=False) + "\n" for e in examples)
    atomic_write_bytes(path, text.encode())
    return path


# ---------------------------------------------------------------- builders from a data directory

def default_data_dir() -> Path:
    """$METALENS_AO_DATA: the training data directory (AO layout) when none is given."""
    env = os.environ.get("METALENS_AO_DATA")
    if not env:
        raise OracleDataError("no oracle training data given: pass --data DIR (a directory in the Activation Oracles "
                              "layout: classification_datasets/, latentqa_datasets/) or set METALENS_AO_DATA")
    return Path(env)


YES_NO = ("Yes", "No")


@dataclass(frozen=True)
class YesNoTask:
    """A labelled-sentence file turned into yes/no questions with a fixed meaning per task."""

    name: str
    """task name"""
    family: str
    """task family (held-out evaluation holds out whole families)"""
    file: str
    """CSV path under classification_datasets/"""
    text_col: str
    """column holding the sentence"""
    label_col: str
    """column holding the label"""
    positive: str
    """label value for which the answer is Yes"""
    questions: tuple
    """question wordings (all asking about the positive class)"""


_TRUE_Q = ("Is this statement true?", "Is this true?", "Would you say this is accurate?", "Does this statement hold true?")
YES_NO_TASKS = (
    YesNoTask("tense_past", "tense", "tense/tense.csv", "sentence", "tense", "past",
              ("Is this sentence in the past tense?", "Does this sentence use the past tense?", "Is the action described here in the past?")),
    YesNoTask("tense_future", "tense", "tense/tense.csv", "sentence", "tense", "future",
              ("Is this sentence in the future tense?", "Does this sentence use the future tense?", "Is the action described here in the future?")),
    YesNoTask("singular", "singular_plural", "singular_plural/singular_plural.csv", "sentence", "n_subjects", "single",
              ("Is this sentence referring to one individual?", "Does this sentence mention a single person?", "Is the subject of this sentence one person?")),
    YesNoTask("gmt_cities", "gmt", "gmt/cities.csv", "statement", "label", "1", _TRUE_Q),
    YesNoTask("gmt_neg_cities", "gmt", "gmt/neg_cities.csv", "statement", "label", "1", _TRUE_Q),
    YesNoTask("gmt_larger_than", "gmt", "gmt/larger_than.csv", "statement", "label", "1", _TRUE_Q),
    YesNoTask("gmt_companies", "gmt", "gmt/companies_true_false.csv", "statement", "label", "1", _TRUE_Q),
    YesNoTask("gmt_common_claim", "gmt", "gmt/common_claim_true_false.csv", "statement", "label", "1", _TRUE_Q),
    YesNoTask("engels_ismale", "engels", "engels/5_hist_fig_ismale.csv", "prompt", "target", "1",
              ("Is this person male?", "Is this historical figure a man?", "Does this name refer to a man?")),
    YesNoTask("engels_politics", "engels", "engels/139_news_class_Politics.csv", "prompt", "target", "1",
              ("Is this article about politics?", "Does this text concern politics?", "Is the topic here politics?")),
)


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        raise OracleDataError(f"dataset file {str(path)!r} does not exist; pass the ao data directory (see its README)")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def split_part(rows: list, name: str, split: str, test_frac: float) -> list:
    """The train or test part of `rows`: a fixed shuffle per `name` (never the seed), then a cut."""
    rows = list(rows)
    random.Random(f"{name}-split").shuffle(rows)
    cut = int(len(rows) * (1 - test_frac))
    return rows[:cut] if split == "train" else rows[cut:]


def yes_no_examples(
    data_dir: str | os.PathLike, tasks: Sequence[str] | None = None, n_per_task: int = 200, seed: int = 0,
    read: str | tuple = "last", max_chars: int = 160, split: str = "train", test_frac: float = 0.3,
) -> list[Example]:
    """Balanced yes/no examples per task. `split` train|test picks a disjoint part of each file."""
    rng = random.Random(seed)
    chosen = [t for t in YES_NO_TASKS if tasks is None or t.name in tasks or t.family in tasks]
    if tasks is not None and not chosen:
        raise OracleDataError(f"no yes/no task matches {list(tasks)!r}; known: {[t.name for t in YES_NO_TASKS]}")
    cls = Path(data_dir) / "classification_datasets"
    out = []
    for t in chosen:
        rows = [r for r in _rows(cls / t.file) if r.get(t.text_col) and len(r[t.text_col].strip()) <= max_chars]
        rows = split_part(rows, t.name, split, test_frac)
        pos = [r for r in rows if r[t.label_col].strip() == t.positive]
        neg = [r for r in rows if r[t.label_col].strip() != t.positive]
        k = min(n_per_task // 2, len(pos), len(neg))
        for label, part in (("Yes", rng.sample(pos, k)), ("No", rng.sample(neg, k))):
            for r in part:
                out.append(Example(" ".join(r[t.text_col].split()), rng.choice(t.questions), label, read, YES_NO, t.name))
    rng.shuffle(out)
    return out


def available_tasks(data_dir: str | os.PathLike) -> list[YesNoTask]:
    """The yes/no tasks whose files exist under data_dir."""
    return [t for t in YES_NO_TASKS if (Path(data_dir) / "classification_datasets" / t.file).exists()]


def task_family(task: str) -> str:
    for t in YES_NO_TASKS:
        if t.name == task:
            return t.family
    return task.split("_")[0]


def dataset_texts(data_dir: str | os.PathLike, max_chars: int = 200) -> list[str]:
    """Plain sentences from every classification CSV and LatentQA stimulus (for context prediction)."""
    root = Path(data_dir)
    texts = []
    for t in available_tasks(root):
        texts += [" ".join(r[t.text_col].split()) for r in _rows(root / "classification_datasets" / t.file)]
    lqa = root / "latentqa_datasets" / "train" / "system.json"
    if lqa.exists():
        texts += [x["stimulus_user"] for x in json.loads(lqa.read_text())]
    return sorted({t for t in texts if 20 <= len(t) <= max_chars})


def context_prediction_examples(
    texts: Sequence[str], tokenizer, n: int, seed: int = 0, max_vectors: int = 3, max_answer: int = 3,
    max_context: int = 32, task: str = "context",
) -> list[Example]:
    """Self-supervised: from k read vectors at positions p-k+1..p, name those tokens, or the next ones.

    The context is cut right after p (a causal model's activations there never saw later tokens);
    examples whose decoded prefix does not re-tokenize to the same ids are skipped.
    """
    rng = random.Random(seed)
    out, tries = [], 0
    while len(out) < n and tries < 20 * n:
        tries += 1
        ids = tokenizer(rng.choice(texts), add_special_tokens=False)["input_ids"][:max_context]
        if len(ids) < 4:
            continue
        k = rng.randint(1, max_vectors)
        mode = rng.choice(("here", "next"))
        hi = len(ids) - (1 if mode == "next" else 0)
        if hi - 1 < k - 1:
            continue
        p = rng.randint(k - 1, hi - 1)
        context = tokenizer.decode(ids[: p + 1])
        if tokenizer(context, add_special_tokens=False)["input_ids"] != ids[: p + 1]:
            continue
        if mode == "here":
            answer = tokenizer.decode(ids[p - k + 1 : p + 1])
            question = "Which tokens were read here?" if k > 1 else "Which token was read here?"
        else:
            m = rng.randint(1, max_answer)
            answer = tokenizer.decode(ids[p + 1 : p + 1 + m])
            question = f"What are the next {m} tokens?" if m > 1 else "What is the next token?"
        if not answer.strip():
            continue
        out.append(Example(context, question, answer.strip(), (p - k + 1, p + 1), None, f"{task}_{mode}"))
    return out


def latentqa_examples(data_dir: str | os.PathLike, split: str = "train", n: int | None = None, seed: int = 0,
                      max_vectors: int = 6) -> list[Example]:
    """System-prompt QA: read the user turn (system tokens masked), name the instruction's label."""
    path = Path(data_dir) / "latentqa_datasets" / split / "system.json"
    if not path.exists():
        raise OracleDataError(f"LatentQA file {str(path)!r} does not exist")
    items = json.loads(path.read_text())
    rng = random.Random(seed)
    if n is not None:
        items = rng.sample(items, min(n, len(items)))
    out = []
    for x in items:
        msgs = [{"role": "system", "content": x["system"]}, {"role": "user", "content": x["stimulus_user"]}]
        kind, _, rest = x["label"].partition("-")
        answer = f"{kind}: {rest.replace('-', ' ')}"
        out.append(Example(msgs, "What was the assistant told to do?", answer, (-max_vectors, None), None, "latentqa"))
    return out


# Relation yes/no questions (../shared/data/ao/classification_datasets/relations): the context is a
# relation prompt ("The capital city of France is"); two kinds of question, each naming a concept the
# activations may or may not carry — the form of a held-out question like "Is this person male?".
#   domain:  "Is this about a country?"  (Yes: this relation's domain; No: another relation's)
#   answer:  "Is the answer Paris?"      (Yes: the true object; No: another object of the same relation)
#            only for categorical relations (few distinct objects: sentiment, sport, phase, colour, ...)
_DOMAIN_Q = ("Is this about a {}?", "Does this text concern a {}?", "Is the subject here a {}?")
_ANSWER_Q = ("Is the answer {}?", "Does this point to {}?", "Would the continuation be {}?")


def relation_examples(data_dir: str | os.PathLike, n: int, seed: int = 0, read: str | tuple = (-2, None),
                      split: str = "train", test_frac: float = 0.3, max_objects: int = 25) -> list[Example]:
    """Balanced yes/no relation questions (half domain, half answer); `split` picks disjoint samples."""
    root = Path(data_dir) / "classification_datasets" / "relations"
    files = sorted(root.glob("*/*.json"))
    if not files:
        raise OracleDataError(f"no relation files under {str(root)!r}; pass the ao data directory (see its README)")
    rels = []
    for f in files:
        try:
            x = json.loads(f.read_text())
            rels.append((f.stem, x["properties"]["domain_name"], x["prompt_templates"], x["samples"]))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise OracleDataError(f"{f}: not a relation file (needs properties.domain_name, prompt_templates, samples): {e}") from None
    rng = random.Random(seed)
    domains = sorted({d for _, d, _, _ in rels})
    by_rel = {}  # relation -> its (domain, templates, sample, objects or None) for this split
    for name, dom, templates, samples in rels:
        samples = [s for s in samples if isinstance(s.get("subject"), str) and isinstance(s.get("object"), str)]
        objects = sorted({s["object"] for s in samples})
        categorical = objects if 2 <= len(objects) <= max_objects else None
        part = [(dom, templates, s, categorical) for s in split_part(samples, name, split, test_frac)]
        if part:
            by_rel[name] = part
    if not by_rel:
        raise OracleDataError(f"no usable relation samples under {str(root)!r}")
    # relation first, then a sample: the big relations (landmarks, athletes) don't drown the rest
    every = sorted(by_rel)
    answerable = [r for r in every if by_rel[r][0][3]]
    out = []
    for i in range(n):
        kind = "answer" if (i % 2 and answerable) else "domain"
        dom, templates, s, objects = rng.choice(by_rel[rng.choice(answerable if kind == "answer" else every)])
        context = rng.choice(templates).format(s["subject"])
        yes = i % 4 < 2
        if kind == "domain":
            concept = dom if yes else rng.choice([d for d in domains if d != dom])
            q = rng.choice(_DOMAIN_Q).format(concept)
        else:
            concept = s["object"] if yes else rng.choice([o for o in objects if o != s["object"]])
            q = rng.choice(_ANSWER_Q).format(concept)
        out.append(Example(context, q, "Yes" if yes else "No", read, YES_NO, f"relations_{kind}"))
    rng.shuffle(out)
    return out


_MENTION_Q = ("Does this text mention '{}'?", "Is the word '{}' in this text?", "Was '{}' read here?")


def mention_examples(texts: Sequence[str], tokenizer, n: int, seed: int = 0, n_read: int = 3,
                     max_context: int = 24) -> list[Example]:
    """Self-supervised yes/no: the last `n_read` tokens are read; is word w among them?

    Yes: a word (3+ letters) from the read tokens; No: a word from another text that appears
    nowhere in this context. Balanced, and the label is always decodable from the read vectors.
    """
    rng = random.Random(seed)
    words = lambda s: [w for w in "".join(c if c.isalpha() else " " for c in s).split() if len(w) >= 3]  # noqa: E731
    out, tries = [], 0
    while len(out) < n and tries < 20 * n:
        tries += 1
        ids = tokenizer(rng.choice(texts), add_special_tokens=False)["input_ids"][:max_context]
        if len(ids) < n_read + 1:
            continue
        end = rng.randint(n_read, len(ids))
        context = tokenizer.decode(ids[:end])
        if tokenizer(context, add_special_tokens=False)["input_ids"] != ids[:end]:
            continue
        tail = tokenizer.decode(ids[end - n_read : end])
        tail_words = [w for w in words(tail) if f" {w}" in f" {tail}"]  # whole words, not word pieces cut at the start
        ctx_words = {w.lower() for w in words(context)}
        if len(out) % 2 == 0:
            if not tail_words:
                continue
            w, ans = rng.choice(tail_words), "Yes"
        else:
            other = [w for w in words(rng.choice(texts)) if w.lower() not in ctx_words]
            if not other:
                continue
            w, ans = rng.choice(other), "No"
        out.append(Example(context, rng.choice(_MENTION_Q).format(w), ans, (-n_read, None), YES_NO, "mention"))
    rng.shuffle(out)
    return out
