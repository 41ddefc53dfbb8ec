"""Evaluate an oracle on choice questions against four baselines on the same items.

Headline: AUROC of P(first choice) (threshold-free; at 135M the base model answers "No" almost
always, so raw accuracy misleads), with accuracy (P > 0.5) beside it, per task and overall.
  oracle     the trained oracle reading activations
  untrained  the same injection hook with the adapter disabled (SelfIE / Patchscopes style)
  probe      logistic regression on the same activations (mean of the read vectors), trained on the
             task's own train split (`probe_train`) or by 5-fold cross-validation: a supervised ceiling
  blackbox   the base model reading the context as text and answering the question
  text       text-only control: the trained oracle given the context as text instead of activations
"""

from __future__ import annotations

from collections import defaultdict
from typing import NamedTuple, Sequence

import numpy as np
import torch

from ..metrics import auroc, mean_defined, why_undefined
from .ask import Oracle
from ..capture import chat_text
from .tasks import Example, OracleDataError, task_family

BASELINES = ("untrained", "probe", "blackbox", "text")


class ChoiceScores(NamedTuple):
    """How well P(first choice) separates the items whose answer is the first choice."""

    auroc: float | None
    """AUROC (None when one class is missing: see `undefined`)"""
    acc: float
    """accuracy of P > 0.5"""
    n: int
    """items scored"""
    undefined: str | None = None
    """why the AUROC is undefined, when it is"""


def choice_scores(p: np.ndarray, y: np.ndarray) -> ChoiceScores:
    a = auroc(p, y)
    return ChoiceScores(None if a is None else round(a, 4), round(float(((p > 0.5) == (y == 1)).mean()), 4), int(len(y)),
                        why_undefined("auroc", p, y))


def _metrics(p: np.ndarray, y: np.ndarray) -> dict:
    s = choice_scores(p, y)._asdict()
    return s if s["undefined"] else {k: v for k, v in s.items() if k != "undefined"}


@torch.no_grad()
def blackbox_probs(oracle: Oracle, examples: Sequence[Example], batch_size: int = 16) -> np.ndarray:
    """P(first choice) from the plain subject reading the context as text in its default chat format."""
    s, tok = oracle.subject, oracle.subject.tokenizer
    out = []
    for i in range(0, len(examples), batch_size):
        part = examples[i : i + batch_size]
        prompts = [s.chat(f"{chat_text(tok, e.context)}\n\n{e.question} Answer {' or '.join(e.choices)}.")
                   for e in part]
        tok.padding_side = "left"  # the answer's first token is predicted at the last position
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(s.device)
        tok.padding_side = "right"
        with oracle.adapter(False):
            logits = s.model(**enc, use_cache=False).logits[:, -1].float()  # [b, vocab]
        for j, e in enumerate(part):
            ids = [tok(c, add_special_tokens=False)["input_ids"][0] for c in e.choices]
            out.append(float(logits[j, ids].softmax(-1)[0]))
    return np.array(out)


def _features(oracle: Oracle, examples: Sequence[Example], layer: int) -> np.ndarray:
    vecs = oracle.read(examples, [layer] * len(examples))
    return torch.stack([v.mean(0) for v in vecs]).float().numpy()  # [n, d]


def probe_probs(oracle: Oracle, examples: Sequence[Example], layer: int,
                probe_train: Sequence[Example] | None = None, seed: int = 0) -> np.ndarray:
    """Logistic-regression probe per task on mean read activations; out-of-fold P(first choice)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = _features(oracle, examples, layer)
    y = np.array([int(e.answer == e.choices[0]) for e in examples])
    out = np.full(len(examples), np.nan)
    by_task = defaultdict(list)
    for i, e in enumerate(examples):
        by_task[e.task].append(i)
    if probe_train is not None:
        probe_train = [e for e in probe_train if e.task in by_task and e.choices]
        Xt_all, yt_all = _features(oracle, probe_train, layer), np.array([int(e.answer == e.choices[0]) for e in probe_train])
    for task, idx in by_task.items():
        idx = np.array(idx)
        make = lambda: make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))  # noqa: E731
        if probe_train is not None:
            tr = np.array([i for i, e in enumerate(probe_train) if e.task == task])
            if len(tr) == 0 or len(set(yt_all[tr])) < 2:
                continue
            out[idx] = make().fit(Xt_all[tr], yt_all[tr]).predict_proba(X[idx])[:, 1]
            continue
        k = min(5, int(np.bincount(y[idx], minlength=2).min()))
        if k < 2:
            continue
        for tr, te in StratifiedKFold(k, shuffle=True, random_state=seed).split(X[idx], y[idx]):
            out[idx[te]] = make().fit(X[idx[tr]], y[idx[tr]]).predict_proba(X[idx[te]])[:, 1]
    return out


def evaluate(oracle: Oracle, examples: Sequence[Example], baselines: Sequence[str] = BASELINES,
             layer: int | None = None, probe_train: Sequence[Example] | None = None) -> dict:
    """Per task and overall AUROC / accuracy of P(first choice) for the oracle and each baseline."""
    bad = [b for b in baselines if b not in BASELINES]
    if bad:
        raise ValueError(f"unknown baseline(s) {bad}; choose from {list(BASELINES)}")
    exs = [e for e in examples if e.choices]
    if not exs:
        raise OracleDataError("no example has 'choices': evaluation scores P(first choice)")
    for i, e in enumerate(exs):
        if e.answer not in e.choices:
            raise OracleDataError(f"example {i} ({e.task}): answer {e.answer!r} is not one of its choices "
                                  f"{list(e.choices)}; an answer must be a choice to be scored")
    layer = oracle.layers[len(oracle.layers) // 2] if layer is None else layer
    layers = [layer] * len(exs)
    y = np.array([int(e.answer == e.choices[0]) for e in exs])
    probs = {"oracle": oracle.choice_probs(exs, layers)[:, 0].numpy()}
    if "untrained" in baselines:
        probs["untrained"] = oracle.choice_probs(exs, layers, adapter=False)[:, 0].numpy()
    if "probe" in baselines:
        probs["probe"] = probe_probs(oracle, exs, layer, probe_train)
    if "blackbox" in baselines:
        probs["blackbox"] = blackbox_probs(oracle, exs)
    if "text" in baselines:
        probs["text"] = oracle.choice_probs(exs, layers, as_text=True)[:, 0].numpy()
    tasks = sorted({e.task for e in exs})
    report = {"layer": layer, "n": len(exs), "methods": list(probs), "overall": {}, "macro_auroc": {}, "tasks": {}}
    for m, p in probs.items():
        ok = ~np.isnan(p)
        report["overall"][m] = _metrics(p[ok], y[ok])
        per = {}
        for t in tasks:
            sel = np.array([e.task == t for e in exs]) & ok
            if sel.any():
                per[t] = _metrics(p[sel], y[sel])
        for t, v in per.items():
            report["tasks"].setdefault(t, {"family": task_family(t)})[m] = v
        macro = mean_defined(v["auroc"] for v in per.values())
        report["macro_auroc"][m] = None if macro is None else round(macro, 4)
    return report


def render(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    methods = report["methods"]
    t = Table(title=f"oracle eval: AUROC of P(first choice) / accuracy, layer {report['layer']}, n={report['n']}")
    t.add_column("task")
    for m in methods:
        t.add_column(m)
    f = lambda x: "n/a" if x is None else f"{x:.2f}"  # noqa: E731
    for task, row in report["tasks"].items():
        t.add_row(task, *[f"{f(row[m]['auroc'])} / {row[m]['acc']:.2f}" if m in row else "-" for m in methods])
    t.add_row("[bold]overall", *[f"{f(report['overall'][m]['auroc'])} / {report['overall'][m]['acc']:.2f}" for m in methods])
    t.add_row("[bold]macro AUROC", *[f(report['macro_auroc'][m]) for m in methods])
    Console().print(t)
