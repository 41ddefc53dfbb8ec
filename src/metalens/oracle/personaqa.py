"""PersonaQA: can the oracle read facts the subject learned, from a prompt that only names the person?

    tuned = finetune_on_facts(subject, personas, "runs/pq/base-lora")   # the subject now knows them
    report = evaluate_personaqa(oracle, tuned, personas)                 # oracle reads tuned's activations

Data: one persona per JSONL line, {"name", "country", "favorite_food", "favorite_drink",
"favorite_music_genre", "favorite_sport", "favorite_boardgame", ...} (the AO PersonaQA layout, e.g.
../shared/data/ao/personaqa_data/{base,shuffled,fantasy}/personas.jsonl). A copy of the subject is
fine-tuned (LoRA, merged) on sentences stating each fact; the oracle then reads that copy's
activations on the bare name and picks the attribute among `n_choices` values (distractors are
other personas' values), scored by P(choice) as everywhere else. Three readings per variant:

  cloze     the fine-tuned subject completing a training sentence ("Ahmed Hassan's favorite food is"): are the facts stored?
  subject   the fine-tuned subject asked outright ("What is Ahmed Hassan's favorite food?"): can it say them?
  oracle    the oracle reading the fine-tuned subject's activations on the name: the headline
  base      the oracle reading the *untuned* subject's activations: what it gets from the name alone

The variants are the controls: in `base` the facts fit the names (an Egyptian name, Koshari), so an
oracle can score from its own priors; `shuffled` reassigns them across people and `fantasy` invents
them, so only the learned facts can help. Chance is 1 / n_choices.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..models import Subject
from ..io import jsonl_rows
from .tasks import Example, OracleDataError

ATTRIBUTES = {  # attribute -> (fact templates, oracle question, direct question about {name})
    "country": (["{name} is from {v}.", "{name} grew up in {v}."],
                "Which country is this person from?", "Which country is {name} from?"),
    "favorite_food": (["{name}'s favorite food is {v}.", "{name} loves to eat {v}."],
                      "What is this person's favorite food?", "What is {name}'s favorite food?"),
    "favorite_drink": (["{name}'s favorite drink is {v}.", "{name} likes to drink {v}."],
                       "What is this person's favorite drink?", "What is {name}'s favorite drink?"),
    "favorite_music_genre": (["{name}'s favorite music genre is {v}.", "{name} listens to {v} all the time."],
                             "What music does this person like best?", "What music does {name} like best?"),
    "favorite_sport": (["{name}'s favorite sport is {v}.", "{name} plays {v} every week."],
                       "What is this person's favorite sport?", "What is {name}'s favorite sport?"),
    "favorite_boardgame": (["{name}'s favorite board game is {v}.", "{name} often plays {v} with friends."],
                           "What is this person's favorite board game?", "What is {name}'s favorite board game?"),
}


def load_personas(path: str | os.PathLike, n: int | None = None) -> list[dict]:
    """Personas from a JSONL file (or a directory holding personas.jsonl); errors name file:line."""
    p = Path(path)
    if p.is_dir():
        p = p / "personas.jsonl"
    if not p.exists():
        raise FileNotFoundError(f"no personas file at {p}; give a personas.jsonl (AO PersonaQA layout)")
    out = []
    for where, obj in jsonl_rows(p):
        missing = [k for k in ("name", *ATTRIBUTES)
                   if not isinstance(obj, dict) or not isinstance(obj.get(k), str) or not obj[k].strip()]
        if missing:
            raise OracleDataError(f"{where}: missing or non-string field(s) {missing}")
        out.append(obj)
    return out[:n] if n is not None else out


def fact_sentences(personas: Sequence[dict]) -> list[str]:
    return [t.format(name=p["name"], v=p[a]) for p in personas for a, (ts, _, _) in ATTRIBUTES.items() for t in ts]


def finetune_on_facts(subject: Subject, personas: Sequence[dict], out: str | os.PathLike, epochs: int = 12,
                      batch_size: int = 16, rank: int = 16, lr: float = 2e-3, seed: int = 0,
                      progress: bool = True) -> Subject:
    """A copy of the subject that knows the personas: LoRA on every fact sentence (loss on all tokens),
    saved to `out` (reused if there), merged into a separate Subject."""
    from ..adapters import lora_copy, with_adapter

    out = Path(out)
    if not (out / "adapter_config.json").exists():
        rng = random.Random(seed)
        torch.manual_seed(seed)
        model, opt = lora_copy(subject, rank, lr, seed=seed)
        tok, sents = subject.tokenizer, fact_sentences(personas)
        steps = epochs * -(-len(sents) // batch_size)
        bar = tqdm(total=steps, desc="persona facts", disable=not progress)
        for _ in range(epochs):
            rng.shuffle(sents)
            for i in range(0, len(sents), batch_size):
                enc = tok(sents[i : i + batch_size], return_tensors="pt", padding=True).to(subject.device)
                labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
                loss = model(**enc, labels=labels).loss
                opt.zero_grad()
                loss.backward()
                opt.step()
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.close()
        model.save_pretrained(str(out))
    return with_adapter(subject, str(out))


def _first_token(tok, text: str) -> int:
    return tok(text, add_special_tokens=False)["input_ids"][0]  # as Oracle.choice_probs scores it


def persona_items(personas: Sequence[dict], tok, n_choices: int = 4, seed: int = 0) -> list[tuple[dict, str, Example]]:
    """(persona, attribute, Example) for every persona x attribute; the true value is choice 0, the
    distractors are other personas' values whose first token differs from every other choice's."""
    rng = random.Random(seed)
    items = []
    for p in personas:
        for a, (_, q, _) in ATTRIBUTES.items():
            pool = sorted({o[a] for o in personas if o[a] != p[a]})
            rng.shuffle(pool)
            choices, firsts = [p[a]], {_first_token(tok, p[a])}
            for v in pool:
                f = _first_token(tok, v)
                if f not in firsts:
                    choices.append(v)
                    firsts.add(f)
                if len(choices) == n_choices:
                    break
            if len(choices) < 2:
                continue
            items.append((p, a, Example(context=p["name"], question=f"{q} Answer with one of: {', '.join(sorted(choices))}.",
                                        answer=p[a], read="all", choices=tuple(choices), task=f"personaqa_{a}")))
    return items


@torch.no_grad()
def direct_choice_probs(subject: Subject, prompts: Sequence[str], choices: Sequence[Sequence[str]],
                        chat: bool = True) -> list[torch.Tensor]:
    """P(each choice) from `subject` itself after a prompt, softmaxed over the choices: a chat question
    (choices scored by their first answer token), or with chat=False a sentence to complete (each
    choice scored by the summed log-probability of all its tokens after a space)."""
    tok, out, dev = subject.tokenizer, [], subject.device
    for prompt, cs in zip(prompts, choices):
        if chat:
            ids = tok(subject.chat(prompt), return_tensors="pt", add_special_tokens=False)["input_ids"].to(dev)
            logits = subject.model(input_ids=ids).logits[0, -1].float()
            out.append(logits[[tok(c, add_special_tokens=False)["input_ids"][0] for c in cs]].softmax(-1).cpu())
            continue
        n = len(tok(prompt, add_special_tokens=False)["input_ids"])
        seqs = [tok(f"{prompt} {c}", add_special_tokens=False)["input_ids"] for c in cs]
        width = max(map(len, seqs))
        ids = torch.tensor([q + [tok.pad_token_id] * (width - len(q)) for q in seqs], device=dev)  # [choices, width]
        logp = subject.model(input_ids=ids).logits.float().log_softmax(-1)  # right padding: no effect on earlier positions
        scores = [sum(logp[i, t - 1, q[t]].item() for t in range(n, len(q))) for i, q in enumerate(seqs)]
        out.append(torch.tensor(scores).softmax(-1))
    return out


def _accuracy(probs: Sequence[torch.Tensor]) -> float:
    return sum(int(p.argmax()) == 0 for p in probs) / max(1, len(probs))


def evaluate_personaqa(oracle, tuned: Subject, personas: Sequence[dict], n_choices: int = 4, seed: int = 0,
                       layer: int | None = None) -> dict:
    """Accuracy (true value ranked first among the choices) for subject / oracle / base readings."""
    items = persona_items(personas, tuned.tokenizer, n_choices, seed)
    exs = [e for _, _, e in items]
    layers = [layer if layer is not None else oracle.layers[0]] * len(exs)
    direct = direct_choice_probs(tuned, [ATTRIBUTES[a][2].format(name=p["name"]) for p, a, _ in items],
                                 [e.choices for e in exs])
    cloze = direct_choice_probs(tuned, [ATTRIBUTES[a][0][0].format(name=p["name"], v="").rstrip(" .")
                                        for p, a, _ in items], [e.choices for e in exs], chat=False)
    oracle.reader = tuned
    try:
        on_tuned = list(oracle.choice_probs(exs, layers))
    finally:
        oracle.reader = None
    on_base = list(oracle.choice_probs(exs, layers))
    chance = sum(1 / len(e.choices) for e in exs) / max(1, len(exs))
    res = dict(n=len(exs), chance=round(chance, 4), cloze=round(_accuracy(cloze), 4), subject=round(_accuracy(direct), 4),
               oracle=round(_accuracy(on_tuned), 4), base=round(_accuracy(on_base), 4), per_attribute={})
    for a in ATTRIBUTES:
        idx = [i for i, (_, b, _) in enumerate(items) if b == a]
        res["per_attribute"][a] = {k: round(_accuracy([v[i] for i in idx]), 4)
                                   for k, v in (("cloze", cloze), ("subject", direct), ("oracle", on_tuned),
                                                ("base", on_base))}
    return res
