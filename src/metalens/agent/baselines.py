"""What the agent is measured against, on the same windows and the same simulator as its own answer:

    one_shot(box, k)        the trained explainer's k candidates from the top exemplars (k LLM calls),
                            the best on the check windows, scored on the test windows
    oracle_explain(box, k)  the activation oracle as explainer: asked what the activations represent where
                            the feature fires (k contexts) and with the feature's direction injected; the
                            best answer on check, scored on test
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..autointerp.explainer import simulation_r
from ..oracle.inject import encode, inject, prompt_ids
from .tools import Toolbox

QUESTION = "What concept does this represent? Answer in a few words."


def best_on_check(box: Toolbox, candidates: Sequence[str]) -> dict:
    """{"explanation", "score" (test r), "check" (its check r), "candidates": [{"text", "check"}]}."""
    cands = [c for c in dict.fromkeys(c.strip() for c in candidates if c and c.strip())]
    check = box.scoring_windows("check")
    rs = [simulation_r(box.simulator, c, check) for c in cands]
    rows = [{"text": c, "check": r} for c, r in zip(cands, rs)]
    defined = [i for i, r in enumerate(rs) if r is not None]
    if not cands:
        return {"explanation": None, "score": None, "check": None, "candidates": [], "reason": "no candidates"}
    best = max(defined, key=lambda i: rs[i]) if defined else 0
    score = simulation_r(box.simulator, cands[best], box.scoring_windows("test"))
    return {"explanation": cands[best], "score": score, "check": rs[best], "candidates": rows}


def one_shot(box: Toolbox, k: int, seed: int = 0) -> dict:
    """Best-of-k from the explainer on the top exemplars (and a few silent windows)."""
    wins = [(w.tokens, w.values) for w in box.exemplars(8) + box.exemplars(2, "zero")]
    return best_on_check(box, box.explainer.explain(wins, k=k, seed=seed)) | {"llm_calls": k}


@torch.no_grad()
def ask_direction(oracle, direction: torch.Tensor, question: str = QUESTION, layer: int | None = None,
                  max_new_tokens: int = 24) -> str:
    """The oracle's answer with one vector (a feature's write direction) injected in place of read activations."""
    s, settings = oracle.subject, oracle.settings
    layer = oracle.layers[0] if layer is None else layer
    batch = encode(s.tokenizer, [prompt_ids(s.tokenizer, layer, 1, question, settings.system)], None, s.device)
    vec = direction.float().reshape(1, -1).to(s.device)  # [1, d]
    with inject(s.model, vec, batch.slot_mask, settings.inject_layer, settings.inject, settings.scale,
                oracle.projection), oracle.adapter(True):
        gen = s.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                               max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=s.tokenizer.pad_token_id)
    return s.tokenizer.decode(gen[0, batch.input_ids.shape[1]:], skip_special_tokens=True).strip()


def oracle_answers(box: Toolbox, k: int, question: str = QUESTION) -> list[str]:
    """k answers: the direction injected (when the feature has one), then the top firing contexts read."""
    oracle = box.get_oracle()
    out = []
    if box.target.direction is not None and oracle.subject.d_model == box.target.direction.shape[0]:
        out.append(ask_direction(oracle, box.target.direction, question))
    for ctx in box.firing_contexts(max(0, k - len(out))):
        out.append(oracle.ask(ctx, question, read=(-1, None), max_new_tokens=24).text)
    return out


def oracle_explain(box: Toolbox, k: int) -> dict:
    """The oracle's answers as candidate explanations, the best on check, scored on test."""
    answers = oracle_answers(box, k)
    return best_on_check(box, answers) | {"oracle_calls": len(answers)}
