"""Linear probes: train on labelled examples, calibrate a threshold at a false-positive rate, save, eval.

Examples use the oracle's JSONL format (context, read, answer, choices, task); the label is
`answer == choices[0]`, the read span is the tokens the probe looks at (a chat context's system
message is never read). A probe's reading of one token is `acts @ weight + bias`; its score for an
example aggregates the span's token readings (mean / max / last).

    probe = train_probe(subject, examples, "resid.9")           # logistic regression, mean
    probe = calibrate(probe, score(subject, probe, control))    # threshold at 1% FPR on control chat
    save_probe(probe, "out/"); load_probe("deception")          # a directory or a shipped name
    report = evaluate(subject, probe, examples)                 # {"overall": {...}, "tasks": {...}}

Methods: "logreg" (logistic regression on standardised features, folded back to raw activations),
"diffmean" (difference of class means), "pairs" (top principal component of contrast-pair
differences, as RepE; pairs share a "pair" field in the JSONL).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, NamedTuple, Sequence

import numpy as np
import torch

from .capture import capture, context_limit, read_span, render_context
from .errors import DataError, MetalensError
from .io import atomic_write_bytes, atomic_write_json, jsonl_objects
from .metrics import auroc, balanced_accuracy, why_undefined
from .models import Subject

Method = Literal["logreg", "diffmean", "pairs"]
Aggregation = Literal["mean", "max", "last"]
METHODS = ("logreg", "diffmean", "pairs")
AGGREGATIONS = ("mean", "max", "last")
SHIPPED = Path(__file__).parent / "probes_default"
WEIGHTS_FILE, META_FILE = "probe.safetensors", "probe.json"


class ProbeError(MetalensError, ValueError):
    """A probe file that cannot be read or a probe setting that is not valid."""


@dataclass(frozen=True, eq=False)
class Probe:
    """A linear reading: value = aggregate(acts @ weight + bias) over the read span at `site`."""

    site: str
    """where it reads, e.g. "resid.9" """
    weight: torch.Tensor = field(repr=False)
    """[d]: the direction, scaled so that acts @ weight + bias is the decision value"""
    bias: float
    """added to every token's reading"""
    method: str
    """logreg | diffmean | pairs"""
    aggregation: str
    """mean | max | last: how an example's token readings become its score"""
    threshold: float | None = None
    """scores above it are flagged (calibrated on control text), None before calibration"""
    name: str = "probe"
    """the reading's name (monitor, results database)"""
    data_hash: str = ""
    """content hash of the training examples"""
    fpr: float | None = None
    """the false-positive rate the threshold was set for"""
    meta: dict = field(default_factory=dict, repr=False)
    """anything else worth keeping with it (training sizes, calibration set, search results)"""

    def __call__(self, acts: torch.Tensor) -> torch.Tensor:
        """Token readings: acts [n, d] -> [n]."""
        if acts.ndim != 2 or acts.shape[1] != self.weight.shape[0]:
            raise ProbeError(f"probe {self.name!r} reads acts [n, {self.weight.shape[0]}]; got {tuple(acts.shape)}")
        return acts.float() @ self.weight.to(acts.device) + self.bias

    def score(self, acts: torch.Tensor) -> float:
        """One example's score: its span's token readings [k] aggregated."""
        return aggregate(self(acts), self.aggregation)


def aggregate(values: torch.Tensor, how: str) -> float:
    if how == "mean":
        return float(values.mean())
    if how == "max":
        return float(values.max())
    if how == "last":
        return float(values[-1])
    raise ProbeError(f"aggregation {how!r} is not one of {AGGREGATIONS}")


# ---------------------------------------------------------------- examples

class Labelled(NamedTuple):
    context: str | list
    """a text or chat messages"""
    read: str | tuple
    """"all" | "last" | (start, end) over the context's readable tokens"""
    label: int
    """1 when answer == choices[0]"""
    task: str
    """per-task metrics"""
    pair: str | None
    """contrast-pair id (method "pairs")"""


def from_dict(obj: dict, where: str) -> Labelled:
    """One oracle-format example as a labelled probe example; a bad one is a DataError naming `where`."""
    ctx = obj.get("context")
    if isinstance(ctx, list):
        if not ctx or not all(isinstance(m, dict) and isinstance(m.get("role"), str)
                              and isinstance(m.get("content"), str) for m in ctx):
            raise DataError(f"{where}: 'context' as a list must hold chat messages {{'role': str, 'content': str}}")
    elif not isinstance(ctx, str) or not ctx:
        raise DataError(f"{where}: 'context' must be a non-empty string or chat messages, got {ctx!r}")
    choices, answer = obj.get("choices"), obj.get("answer")
    if not (isinstance(choices, list) and len(choices) == 2 and all(isinstance(c, str) for c in choices)):
        raise DataError(f"{where}: a probe example needs 'choices': [positive, negative], got {choices!r}")
    if answer not in choices:
        raise DataError(f"{where}: 'answer' {answer!r} is not one of the choices {choices!r}")
    read = obj.get("read", "all")
    if isinstance(read, list):
        if len(read) != 2 or not all(r is None or (isinstance(r, int) and not isinstance(r, bool)) for r in read):
            raise DataError(f"{where}: 'read' as a list must be [start, end] integers (end may be null), got {read!r}")
        read = tuple(read)
    elif read not in ("all", "last"):
        raise DataError(f"{where}: 'read' must be 'last', 'all' or [start, end], got {read!r}")
    task = obj.get("task", "custom")
    pair = obj.get("pair")
    return Labelled(ctx, read, int(answer == choices[0]), str(task), None if pair is None else str(pair))


def load_examples(path: str | os.PathLike) -> list[Labelled]:
    """Labelled examples from an oracle-format JSONL file (DataError with file:line on a bad line)."""
    if not Path(path).is_file():
        raise DataError(f"examples file {str(path)!r} does not exist")
    out = [from_dict(obj, where) for where, obj in jsonl_objects(path)]
    if not out:
        raise DataError(f"examples file {str(path)!r} holds no examples")
    return out


def examples_hash(examples: Sequence[Labelled]) -> str:
    from .io import texts_hash

    return texts_hash([json.dumps([e.context, list(e.read) if isinstance(e.read, tuple) else e.read, e.label, e.task])
                       for e in examples])


@torch.no_grad()
def span_acts(subject: Subject, examples: Sequence[Labelled], sites: Sequence[str], chunk: int = 32,
              max_length: int | None = None) -> list[dict[str, torch.Tensor]]:
    """For each example, {site: activations of its read span [k, d]} (read in chunks to bound memory).

    Whole contexts are read, never cut: one longer than `max_length` (default: the subject's
    max_position_embeddings) is a DataError naming its length and the limit."""
    tok = subject.tokenizer
    limit = max_length if max_length is not None else context_limit(subject)
    out = []
    for c in range(0, len(examples), chunk):
        part = examples[c : c + chunk]
        rendered = [render_context(tok, e.context) for e in part]
        for i, r in enumerate(rendered):
            if limit is not None and len(r.ids) > limit:
                raise DataError(f"example {c + i}: its context is {len(r.ids)} tokens, more than the {limit} the subject "
                                "can read; shorten it or pass span_acts(..., max_length=N)")
        texts = [r.text for r in rendered]
        acts = capture(subject, texts, list(sites), batch_size=16, max_length=None, add_special_tokens=False,
                       progress=False)
        for i, (e, (_, ids, readable)) in enumerate(zip(part, rendered)):
            rows = (acts.text_idx == i).nonzero(as_tuple=True)[0]
            if len(rows) != len(ids) or not torch.equal(acts.token_ids[rows], torch.tensor(ids)):
                raise DataError(f"example {c + i}: its context does not re-tokenize to the same ids (got {len(rows)} rows "
                                f"for {len(ids)} ids); give plain text or chat messages")
            sl = read_span(e.read, len(rows), readable)
            out.append({s: acts[s][rows[sl]] for s in acts.sites})
    return out


# ---------------------------------------------------------------- training

def features(rows: Sequence[torch.Tensor], aggregation: str) -> torch.Tensor:
    """Example features [n, d] from span activations (mean / last of the span; max trains on tokens)."""
    if aggregation == "mean":
        return torch.stack([r.float().mean(0) for r in rows])
    if aggregation == "last":
        return torch.stack([r[-1].float() for r in rows])
    raise ProbeError(f"no per-example features for aggregation {aggregation!r}")


def fit_direction(X: torch.Tensor, y: np.ndarray, method: str, pairs: Sequence[tuple[int, int]] = (),
                  C: float = 0.1, seed: int = 0) -> tuple[torch.Tensor, float]:
    """(weight [d], bias) from features X [n, d] and labels y [n]; decision value X @ w + b."""
    if len(set(y.tolist())) < 2:
        raise ProbeError(f"training needs both classes; labels seen: {sorted(set(y.tolist()))}")
    X = X.double()
    pos, neg = X[torch.as_tensor(y == 1)], X[torch.as_tensor(y == 0)]
    if method == "logreg":
        from sklearn.linear_model import LogisticRegression

        mu, sd = X.mean(0), X.std(0).clamp_min(1e-6)
        clf = LogisticRegression(C=C, max_iter=3000, class_weight="balanced", random_state=seed)
        clf.fit(((X - mu) / sd).numpy(), y)
        w = torch.as_tensor(clf.coef_[0]) / sd
        return w.float(), float(clf.intercept_[0] - (w * mu).sum())
    if method == "diffmean":
        w = pos.mean(0) - neg.mean(0)
    elif method == "pairs":
        if not pairs:
            raise ProbeError("method 'pairs' needs contrast pairs: give each positive and its negative the same 'pair' field")
        D = torch.stack([X[i] - X[j] for i, j in pairs])  # [n_pairs, d], positive minus negative
        signs = torch.as_tensor(np.random.default_rng(seed).choice([-1.0, 1.0], len(D)), dtype=D.dtype)
        _, _, V = torch.linalg.svd(D * signs[:, None], full_matrices=False)  # symmetric cloud: PC1 of differences
        w = V[0] if float(D.mean(0) @ V[0]) >= 0 else -V[0]
    else:
        raise ProbeError(f"method {method!r} is not one of {METHODS}")
    w = w / (w @ w).sqrt().clamp_min(1e-12)
    # scale to unit spread of the projections, bias at the midpoint of the class means
    proj = X @ w
    s = float(proj.std().clamp_min(1e-6))
    w = w / s
    return w.float(), float(-((pos.mean(0) + neg.mean(0)) / 2) @ w)


def train_probe(subject: Subject, examples: Sequence[Labelled], site: str, method: Method = "logreg",
                aggregation: Aggregation = "mean", name: str = "probe", C: float = 0.1,
                acts: Sequence[dict] | None = None) -> Probe:
    """Fit a probe on labelled examples at `site` (acts: precomputed `span_acts` to reuse)."""
    if method not in METHODS:
        raise ProbeError(f"method {method!r} is not one of {METHODS}")
    if aggregation not in AGGREGATIONS:
        raise ProbeError(f"aggregation {aggregation!r} is not one of {AGGREGATIONS}")
    site = str(subject.site(site))
    rows = [a[site] for a in (acts if acts is not None else span_acts(subject, examples, [site]))]
    y = np.array([e.label for e in examples])
    pairs = pair_index(examples) if method == "pairs" else []
    if aggregation == "max":  # every span token carries its example's label
        X = torch.cat([r.float() for r in rows])
        y_tok = np.concatenate([[e.label] * len(r) for e, r in zip(examples, rows)])
        starts = np.cumsum([0] + [len(r) for r in rows])
        tok_pairs = [(starts[i], starts[j]) for i, j in pairs]  # first tokens of each pair's spans
        w, b = fit_direction(X, y_tok, method, tok_pairs, C)
    else:
        w, b = fit_direction(features(rows, aggregation), y, method, pairs, C)
    meta = {"n": len(examples), "n_pos": int(y.sum()), "tasks": sorted({e.task for e in examples}), "C": C}
    return Probe(site, w, b, method, aggregation, None, name, examples_hash(examples), None, meta)


def pair_index(examples: Sequence[Labelled]) -> list[tuple[int, int]]:
    """(positive index, negative index) for every 'pair' id holding one of each."""
    groups: dict[str, dict[int, int]] = defaultdict(dict)
    for i, e in enumerate(examples):
        if e.pair is not None:
            groups[e.pair].setdefault(e.label, i)
    return [(g[1], g[0]) for g in groups.values() if 0 in g and 1 in g]


# ---------------------------------------------------------------- scoring, calibration, eval

def score(subject: Subject, probe: Probe, examples: Sequence[Labelled], acts: Sequence[dict] | None = None) -> np.ndarray:
    """Each example's score [n] (acts: precomputed `span_acts` including probe.site)."""
    acts = acts if acts is not None else span_acts(subject, examples, [probe.site])
    return np.array([probe.score(a[probe.site]) for a in acts])


def threshold_at(scores: Sequence[float], fpr: float = 0.01) -> float:
    """A threshold t with mean(scores > t) = floor(fpr * n) / n on these n control (negative) scores."""
    s = np.sort(np.asarray(scores, np.float64))[::-1]
    if len(s) == 0 or not 0 <= fpr < 1:
        raise ProbeError(f"calibration needs control scores and 0 <= fpr < 1; got {len(s)} scores, fpr={fpr}")
    k = min(int(np.floor(fpr * len(s))), len(s) - 1)  # this many control scores may lie above it
    return float(s[0]) if k == 0 else float((s[k] + s[k - 1]) / 2)  # midway: robust to float noise in re-reads


def calibrate(probe: Probe, control_scores: Sequence[float], fpr: float = 0.01, source: str = "") -> Probe:
    """The probe with its threshold set for `fpr` false positives on control (negative) scores."""
    meta = probe.meta | {"calibration": {"n": len(control_scores), "source": source}}
    return replace(probe, threshold=threshold_at(control_scores, fpr), fpr=fpr, meta=meta)


def metrics(scores: np.ndarray, labels: np.ndarray, threshold: float | None) -> dict:
    """AUROC, and at the threshold balanced accuracy, recall and FPR (None when undefined, with reasons)."""
    out = {"auroc": auroc(scores, labels), "n": int(len(labels)), "n_pos": int(labels.sum())}
    if threshold is not None:
        flag = scores > threshold
        out["balanced_accuracy"] = balanced_accuracy(scores, labels, threshold)
        out["recall"] = float(flag[labels == 1].mean()) if labels.any() else None
        out["fpr"] = float(flag[labels == 0].mean()) if (labels == 0).any() else None
    why = why_undefined("auroc", scores, labels)
    if why:
        out["why_undefined"] = why
    return out


def evaluate(subject: Subject, probe: Probe, examples: Sequence[Labelled], acts: Sequence[dict] | None = None,
             scores: np.ndarray | None = None) -> dict:
    """Per task and overall metrics, shaped like `metalens oracle eval`'s report."""
    s = score(subject, probe, examples, acts) if scores is None else np.asarray(scores)
    y = np.array([e.label for e in examples])
    tasks = defaultdict(list)
    for i, e in enumerate(examples):
        tasks[e.task].append(i)
    return {"probe": probe.name, "site": probe.site, "method": probe.method, "aggregation": probe.aggregation,
            "threshold": probe.threshold, "fpr_target": probe.fpr, "n": len(examples),
            "overall": metrics(s, y, probe.threshold),
            "tasks": {t: metrics(s[idx], y[idx], probe.threshold) for t, idx in sorted(tasks.items())}}


# ---------------------------------------------------------------- files

def save_probe(probe: Probe, out: str | os.PathLike) -> Path:
    """Write probe.safetensors (the weight) + probe.json (everything else) into directory `out`."""
    from safetensors.torch import save

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / WEIGHTS_FILE, save({"weight": probe.weight.detach().float().contiguous().cpu()}))
    meta = {k: getattr(probe, k) for k in ("name", "site", "bias", "method", "aggregation", "threshold", "fpr",
                                           "data_hash", "meta")}
    atomic_write_json(out / META_FILE, meta)
    return out


def load_probe(path_or_name: str | os.PathLike) -> Probe:
    """A probe directory (probe.safetensors + probe.json) or a shipped name such as "deception"."""
    from safetensors.torch import load_file

    d = Path(path_or_name)
    if not (d / META_FILE).exists() and (SHIPPED / str(path_or_name) / META_FILE).exists():
        d = SHIPPED / str(path_or_name)
    if not (d / META_FILE).is_file() or not (d / WEIGHTS_FILE).is_file():
        shipped = sorted(p.name for p in SHIPPED.iterdir() if (p / META_FILE).exists()) if SHIPPED.exists() else []
        raise ProbeError(f"{str(path_or_name)!r} is not a probe directory ({WEIGHTS_FILE} + {META_FILE}) "
                         f"nor a shipped probe name; shipped: {shipped}")
    try:
        meta = json.loads((d / META_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProbeError(f"{d / META_FILE}: not valid JSON ({e})") from None
    missing = [k for k in ("site", "bias", "method", "aggregation") if k not in meta]
    if not isinstance(meta, dict) or missing:
        raise ProbeError(f"{d / META_FILE}: missing field(s) {missing} (a probe.json needs site, bias, method, aggregation)")
    try:
        weight = load_file(str(d / WEIGHTS_FILE))["weight"]
    except Exception as e:  # safetensors raises its own error types for a corrupt header
        raise ProbeError(f"{d / WEIGHTS_FILE}: not a readable safetensors file with a 'weight' tensor ({e})") from None
    if weight.ndim != 1:
        raise ProbeError(f"{d / WEIGHTS_FILE}: 'weight' must be one vector [d], got shape {tuple(weight.shape)}")
    if meta["method"] not in METHODS or meta["aggregation"] not in AGGREGATIONS:
        raise ProbeError(f"{d / META_FILE}: method {meta['method']!r} / aggregation {meta['aggregation']!r} not in "
                         f"{METHODS} / {AGGREGATIONS}")
    return Probe(meta["site"], weight.float(), float(meta["bias"]), meta["method"], meta["aggregation"],
                 meta.get("threshold"), meta.get("name", d.name), meta.get("data_hash", ""), meta.get("fpr"),
                 meta.get("meta", {}))

