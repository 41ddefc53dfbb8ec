"""Explain: an explainer LLM reads a feature's activating examples and writes an explanation.

The prompt shows each example with the activating tokens marked <<like this>> and lists the
(token, value) pairs on a 0..10 scale; the reply is parsed robustly (a last "Explanation:" line,
markdown, quotes, reasoning blocks, chatter around it) into one short phrase.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from .examples import Window, normalise, show_token
from .llm import LLM

PROMPT_VERSION = "explain-v1"

SYSTEM = (
    "You are a careful interpretability researcher. You are shown text examples where one neuron of a "
    "language model activates. Tokens where it activates are marked <<like this>>, and the values (0 to 10) "
    "follow each example. Find what the marked tokens have in common and describe it in a short phrase "
    "(a few words). Reply with one line: Explanation: <phrase>"
)


def format_example(w: Window, max_value: float, threshold: float = 0.0) -> str:
    """Text with the active tokens marked, then their values on the 0..10 scale."""
    levels = normalise(w.values, max_value)  # [n] ints 0..10
    marked, pairs = [], []
    for t, v, lv in zip(w.tokens, w.values, levels):
        shown = show_token(t)
        if v > threshold and lv > 0:
            marked.append(f"<<{shown}>>")
            pairs.append(f"({shown.strip()!r}, {lv})")
        else:
            marked.append(shown)
    return "".join(marked).strip() + "\nActivations: " + (", ".join(pairs) or "none")


def explain_messages(windows: Sequence[Window], threshold: float = 0.0) -> list[dict]:
    max_value = max((w.max for w in windows), default=0.0)
    body = "\n\n".join(f"Example {i}: {format_example(w, max_value, threshold)}" for i, w in enumerate(windows, 1))
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"{body}\n\nWhat does the neuron detect? Reply as: Explanation: <short phrase>"},
    ]


_LABEL = re.compile(r"(?:\[?\s*explanation\s*\]?|the neuron (?:detects|fires on|activates on)|answer)\s*[:\-–]\s*", re.I)
_PREFIXES = re.compile(
    r"^(?:this|the)\s+(?:neuron|feature|latent)\s+(?:(?:is|seems|appears)\s+to\s+)?"
    r"(?:detects?|fires?\s+on|activates?\s+(?:on|for)|responds?\s+to|looks?\s+for|(?:is\s+)?about)\s+",
    re.I,
)


def parse_explanation(reply: str, max_chars: int = 200) -> str | None:
    """The explanation in an explainer's reply, or None when there is none.

    Takes the text after the LAST "Explanation:" label (also "[EXPLANATION]:", "**Explanation:**"),
    else the first non-empty line; drops <think> blocks, markdown, list bullets, wrapping quotes and
    "This neuron detects" prefixes; cuts at the end of the first line, and at max_chars on a word.
    """
    if not reply:
        return None
    text = re.sub(r"<think>.*?(</think>|$)", " ", reply, flags=re.S | re.I)
    text = text.replace("**", "").replace("__", "").replace("`", "")
    hits = list(_LABEL.finditer(text))
    if hits:
        text = text[hits[-1].end() :]
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    line = re.sub(r"^(?:[-*•>#]+|\d+[.)])\s*", "", lines[0]).strip()
    line = _PREFIXES.sub("", line).strip()
    line = line.strip(" \"'“”‘’").strip()
    line = re.sub(r"\s+", " ", line).rstrip(" .;:,")
    if len(line) > max_chars:
        line = line[:max_chars].rsplit(" ", 1)[0].rstrip(" .;:,")
    if not re.search(r"\w", line):
        return None
    return line


def explanation_windows(top: Sequence[Window], stratified: Sequence[Window], n: int, seed: int = 0) -> list[Window]:
    """n windows for the explainer: half top, half stratified (fewer of either when short), shuffled."""
    rng = np.random.default_rng(seed)
    n_strat = min(len(stratified), n // 2)
    wins = list(top[: n - n_strat])
    if n_strat:
        wins += [stratified[i] for i in rng.choice(len(stratified), n_strat, replace=False)]
    rng.shuffle(wins)
    return wins


def explain(
    llm: LLM,
    windows: Sequence[Window],
    k: int = 8,
    temperature: float = 0.8,
    max_tokens: int = 48,
    seed: int = 0,
    threshold: float = 0.0,
) -> list[str]:
    """k explanations (parsed; unparseable replies are dropped, duplicates kept once, order kept)."""
    replies = llm.generate([explain_messages(windows, threshold)], max_tokens, temperature if k > 1 else 0.0, seed, k)[0]
    out: list[str] = []
    for r in replies:
        e = parse_explanation(r)
        if e and e.lower() not in {x.lower() for x in out}:
            out.append(e)
    return out
