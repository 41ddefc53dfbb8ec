"""Scores of an explanation on held-out examples: simulation, detection, fuzzing.

    simulation  Pearson r between simulated and true values, over all tokens of top+random windows
                ("all") and of random windows only ("random")
    detection   P(yes) that a window holds what the explanation describes, activating vs not:
                AUROC and balanced accuracy (threshold 0.5)
    fuzzing     activating windows with the right tokens highlighted vs the same windows with
                random inactive tokens highlighted: is the highlighting described by the explanation?

An undefined score (a constant side, one class missing) is None with a "reason", never 0 or 0.5.
Each is also reported for a control explanation (another feature's) by the caller (search.py),
so a score reads against what a wrong explanation gets.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..metrics import auroc, balanced_accuracy, pearson, why_undefined
from .examples import Window, show_token
from .llm import LLM, LLMError
from .simulator import PromptSimulator, Simulator

__all__ = ["auroc", "balanced_accuracy", "pearson", "simulation_score", "detection_score", "fuzzing_score"]

DETECTION_VERSION = "det-v1"
FUZZ_VERSION = "fuzz-v1"
YES_NO = (" Yes", " No")


def _unique(windows: Sequence[Window]) -> list[Window]:
    seen, out = set(), []
    for w in windows:
        if (w.text, w.start) not in seen:
            seen.add((w.text, w.start))
            out.append(w)
    return out


def as_simulator(sim: Simulator | LLM, max_value: int | None = None) -> Simulator:
    """A Simulator as is; an LLM as the prompted simulator on it."""
    return sim if hasattr(sim, "simulate") else PromptSimulator(sim, max_value)


def _r(pred: np.ndarray, true: np.ndarray) -> tuple[float | None, str | None]:
    return pearson(pred, true), why_undefined("pearson", pred, true)


def simulation_score(
    sim: Simulator | LLM, explanation: str, top: Sequence[Window], random: Sequence[Window], max_value: int | None = None
) -> dict:
    """{"all": r over top+random tokens, "random": r over random-only tokens, "n_tokens"}; an undefined r
    is None and its reason is under "all_reason" / "random_reason"."""
    wins = _unique(list(top) + list(random))
    preds = as_simulator(sim, max_value).simulate(explanation, [w.tokens for w in wins])
    key = {(w.text, w.start): i for i, w in enumerate(wins)}
    rnd = [key[(w.text, w.start)] for w in random]
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0)  # noqa: E731
    r_all, why_all = _r(cat(preds), cat([w.values for w in wins]))
    r_rnd, why_rnd = _r(cat([preds[i] for i in rnd]), cat([wins[i].values for i in rnd]))
    out = {"all": r_all, "random": r_rnd, "n_tokens": int(sum(len(w.tokens) for w in wins))}
    if why_all:
        out["all_reason"] = why_all
    if why_rnd:
        out["random_reason"] = why_rnd
    return out


def _auc_scores(p: np.ndarray, labels: list[int]) -> dict:
    out = {"auroc": auroc(p, labels), "balanced_accuracy": balanced_accuracy(p, labels), "n": len(labels)}
    if out["auroc"] is None:
        out["reason"] = why_undefined("auroc", p, labels)
    return out


def answer_format(llm: LLM, yes_no: Sequence[str]) -> tuple[str, list[str]]:
    """(suffix to add to the prompt, answer tokens): " Yes"/" No" if those are single tokens, else
    "Yes"/"No" after a space, else "Y"/"N" after a space (a byte-level tokenizer)."""
    stripped = [c.strip() for c in yes_no]
    for suffix, choices in (("", list(yes_no)), (" ", stripped), (" ", [c[:1] for c in stripped])):
        if all(llm.n_tokens(c) == 1 for c in choices) and len(set(choices)) == len(choices):
            return suffix, choices
    raise LLMError(f"neither {list(yes_no)} nor {stripped} are single, distinct tokens for {llm.name}")


def _p_yes(llm: LLM, prompts: Sequence[str], yes_no: Sequence[str]) -> np.ndarray:
    suffix, choices = answer_format(llm, yes_no)
    prompts = [p + suffix for p in prompts]
    probs = llm.position_probs([(p, [len(p)]) for p in prompts], choices)
    pr = np.stack([x[0] for x in probs]) if probs else np.zeros((0, 2))  # [n, 2]
    mass = pr.sum(-1)
    return np.where(mass > 0, pr[:, 0] / np.where(mass > 0, mass, 1.0), 0.5)


DETECTION_HEADER = (
    "A feature of a language model fires on some texts and not others. Given its explanation, say whether "
    "it fires anywhere in the text.\n\n"
    "Explanation: mentions of animals\nText: The dog slept by the door.\nDoes the feature fire on this text? Answer: Yes\n\n"
    "Explanation: mentions of animals\nText: We paid the bill and left.\nDoes the feature fire on this text? Answer: No\n\n"
)


def detection_prompt(explanation: str, tokens: Sequence[str]) -> str:
    text = "".join(tokens).replace("\n", " ").strip()
    return DETECTION_HEADER + f"Explanation: {explanation.strip()}\nText: {text}\nDoes the feature fire on this text? Answer:"


def detection_score(
    llm: LLM, explanation: str, positives: Sequence[Window], negatives: Sequence[Window], yes_no: Sequence[str] = YES_NO
) -> dict:
    pos, neg = _unique(positives), _unique(negatives)
    p = _p_yes(llm, [detection_prompt(explanation, w.tokens) for w in pos + neg], yes_no)
    return _auc_scores(p, [1] * len(pos) + [0] * len(neg))


FUZZ_HEADER = (
    "A feature of a language model fires on some tokens. In each text, tokens are marked <<like this>>. Say "
    "whether the marked tokens are the ones the explanation describes.\n\n"
    "Explanation: mentions of animals\nText: The <<dog>> slept by the <<cat>>.\nAre the marked tokens correct? Answer: Yes\n\n"
    "Explanation: mentions of animals\nText: The dog <<slept>> by the cat<<.>>\nAre the marked tokens correct? Answer: No\n\n"
)


def fuzzing_prompt(explanation: str, tokens: Sequence[str], marked: Sequence[bool]) -> str:
    text = "".join(f"<<{t}>>" if m else t for t, m in zip(tokens, marked)).replace("\n", " ").strip()
    return FUZZ_HEADER + f"Explanation: {explanation.strip()}\nText: {text}\nAre the marked tokens correct? Answer:"


def fuzz_marks(w: Window, threshold: float, rng: np.random.Generator) -> tuple[list[bool], list[bool]]:
    """(right, wrong) highlight masks: the active tokens, and as many random inactive ones."""
    right = [bool(v > threshold) for v in w.values]
    k = max(1, sum(right))
    idle = [i for i, m in enumerate(right) if not m]
    pick = set(rng.choice(idle, size=min(k, len(idle)), replace=False).tolist()) if idle else set()
    return right, [i in pick for i in range(len(right))]


def fuzzing_score(
    llm: LLM,
    explanation: str,
    activating: Sequence[Window],
    threshold: float = 0.0,
    seed: int = 0,
    yes_no: Sequence[str] = YES_NO,
) -> dict:
    rng = np.random.default_rng(seed)
    wins = [w for w in _unique(activating) if w.max > threshold]
    prompts, labels = [], []
    for w in wins:
        right, wrong = fuzz_marks(w, threshold, rng)
        prompts += [fuzzing_prompt(explanation, w.tokens, right), fuzzing_prompt(explanation, w.tokens, wrong)]
        labels += [1, 0]
    return _auc_scores(_p_yes(llm, prompts, yes_no), labels)


def show_window(w: Window) -> str:
    return "".join(show_token(t) for t in w.tokens)
