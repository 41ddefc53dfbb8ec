"""Simulation: given only an explanation, predict a feature's value (0..max) at every token.

The prompt lists the tokens of a window one per line as `token<TAB>unknown`, after a short
few-shot header (format of OpenAI's neuron-explainer "all at once" simulator). The prediction for
token i is the expected value under the LLM's next-token distribution over the digit tokens at the
position of the i-th "unknown":

    E[v_i] = sum_v v * p_i(v) / sum_v p_i(v)

Every token of a window is read from ONE forward pass (causal masking makes position i see only
the lines before it, exactly as if the prompt stopped there); `simulate_per_token` does the
one-call-per-token version for the equality test and the speed comparison.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from .examples import show_token
from .llm import LLM

PROMPT_VERSION = "sim-v1"
PLACEHOLDER = "unknown"

HEADER = (
    "We're studying neurons in a neural network. Each neuron looks for one particular thing in a short "
    "document. Read the explanation of what the neuron does, and predict its activation on each token.\n"
    "The format is token<tab>activation. Activations go from 0 to {max}; most are 0. \"unknown\" marks an "
    "activation to predict.\n\n"
)
FEW_SHOT = [
    ("names of planets (Mars, Venus)", [("We", 0), (" flew", 0), (" past", 0), (" Mars", 10), (" and", 0), (" Venus", 9),
                                        (".", 0)]),
    ("the symbol '#'", [("Use", 0), (" #", 10), ("tag", 0), (" or", 0), (" #", 8), ("1", 0)]),
]


class SimPrompt(NamedTuple):
    prompt: str
    """the full prompt"""
    offsets: list[int]
    """char offset of each token's placeholder (where its value would be written)"""


def scale_for(llm: LLM) -> int:
    """Top of the value scale: 10 when "10" is one token for this LLM, else 9 (digit-split tokenizers)."""
    return 10 if llm.n_tokens("10") == 1 else 9


def value_choices(max_value: int) -> list[str]:
    return [str(v) for v in range(max_value + 1)]


def expected_values(probs: np.ndarray) -> np.ndarray:
    """[n, max+1] probabilities of the values 0..max (unnormalised) -> [n] expected values.

    Rows with no mass (an endpoint whose top-k held no digit) predict 0.
    """
    probs = np.asarray(probs, dtype=np.float64)
    mass = probs.sum(-1)  # [n]
    ev = probs @ np.arange(probs.shape[-1], dtype=np.float64)  # [n]
    return np.where(mass > 0, ev / np.where(mass > 0, mass, 1.0), 0.0)


def _block(explanation: str, n: int) -> str:
    return f"Neuron {n}\nExplanation of neuron {n} behavior: {explanation.strip()}\nActivations:\n<start>\n"


def simulation_prompt(explanation: str, tokens: Sequence[str], max_value: int = 10) -> SimPrompt:
    parts = [HEADER.format(max=max_value)]
    for n, (expl, rows) in enumerate(FEW_SHOT, 1):
        scale = max_value / 10
        parts.append(_block(expl, n) + "".join(f"{show_token(t)}\t{round(v * scale)}\n" for t, v in rows) + "<end>\n\n")
    prompt = "".join(parts) + _block(explanation, len(FEW_SHOT) + 1)
    offsets = []
    for t in tokens:
        prompt += f"{show_token(t)}\t"
        offsets.append(len(prompt))
        prompt += f"{PLACEHOLDER}\n"
    return SimPrompt(prompt + "<end>\n", offsets)


def simulate(
    llm: LLM, explanation: str, windows: Sequence[Sequence[str]], max_value: int | None = None
) -> list[np.ndarray]:
    """Expected value [n_tokens] for every window's tokens; one forward pass (one request) per window."""
    max_value = scale_for(llm) if max_value is None else max_value
    prompts = [simulation_prompt(explanation, toks, max_value) for toks in windows]
    probs = llm.position_probs([(p.prompt, p.offsets) for p in prompts], value_choices(max_value))
    return [expected_values(p) for p in probs]


def simulate_per_token(
    llm: LLM, explanation: str, windows: Sequence[Sequence[str]], max_value: int | None = None
) -> list[np.ndarray]:
    """The same prediction with one call per token: the prompt cut right before each placeholder."""
    max_value = scale_for(llm) if max_value is None else max_value
    out = []
    for toks in windows:
        p = simulation_prompt(explanation, toks, max_value)
        probs = llm.position_probs([(p.prompt[:o], [o]) for o in p.offsets], value_choices(max_value))
        out.append(expected_values(np.concatenate(probs)) if probs else np.zeros(0))
    return out
