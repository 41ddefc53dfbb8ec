"""Synthetic features with known rules on real text: the ground truth for autointerp.

Each `SyntheticFeature` maps a tokenized text to a value per token by a rule a person can state
(its `explanation`): word lists (months, weekdays, colours), context rules (a token inside double
quotes or parentheses), graded values (a digit's value, a word's length), OR / AND compounds, and
label noise. Text comes from `corpus()`: hand-written everyday sentences plus paragraphs of the
Python reference manual that ships with CPython (`pydoc_data.topics`), so it runs offline.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .examples import Sequences

SENTENCES = """\
We met in January and again in March, when the snow had finally melted.
The report is due on Friday, 14 May, and the review follows in June.
She said, "I will be there at seven," and then she left without a word.
Prices rose by 3 percent in October after the storm (the worst in 40 years).
On Monday the red bus was late; on Tuesday the blue one never came.
"Nothing is impossible," he wrote, "if you start early enough."
My grandmother was born on 2 August 1931 in a small village near the coast.
The meeting moved from Wednesday to Thursday because the room (room 12) was booked.
He painted the fence green, the door yellow and the window frames white.
In December the market opens at 9 and closes at 5, even on Saturday.
The recipe needs 2 eggs, 250 grams of flour and a pinch of salt.
"Are you coming?" she asked. "Only if it stops raining," I said.
The team trained every Sunday from April until September.
Running late again, she grabbed her keys and kept walking towards the station.
The museum (which opened in 1887) is free on the first Monday of every month.
Her favourite colours were purple and orange, never brown or grey.
By February the river had risen 6 feet, flooding 13 houses.
The sign on the door read "Closed for repairs" in large black letters.
We are planning a trip in July, probably leaving on a Friday morning.
The children were laughing, singing and dancing around the fire.
The new bridge is 480 metres long and took 3 years to build.
He whispered "goodbye" and walked out into the cold November night.
On Thursday, 8 March, the committee voted 7 to 4 in favour of the plan.
The sky turned pink, then red, and finally a deep dark blue.
Our office (on the second floor) is closed on Saturday and Sunday.
"Keep the change," said the driver, smiling as he handed back the ticket.
The garden looked best in May, when the white roses were blooming.
She has been reading, writing and thinking about the problem for weeks.
Flights to the island run twice a week, on Tuesday and Saturday, from June to August.
The old clock struck 12, and the house fell silent.
The fox (a young one, by the look of it) crossed the road at dawn.
In January 2019 the company hired 250 new workers.
"Be careful," warned the guide. "The path is narrow and the rocks are wet."
The walls were painted a pale green that turned almost grey in the evening light.
Every Wednesday she volunteers at the library from 10 until 4.
The festival, which usually takes place in September, was moved to October.
He was building a boat, hoping to finish before the summer.
The train leaves at 6 and arrives at 9, unless it is delayed again.
We could hear the neighbours arguing (loudly) through the thin wall.
The shop sells red apples, green pears and yellow lemons.
"I never said that," she insisted, "and you know it."
On Friday evenings the family eats together, usually around 7.
The exam is scheduled for the last week of April, on a Monday.
The temperature dropped to minus 15 degrees in February.
The boy kept asking "why?" until his father ran out of answers.
Our flight was cancelled on Sunday, so we stayed another 2 nights.
The ceremony took place in a small white church (built in 1702).
The cat was sleeping, the dog was dreaming and the baby was crying.
He bought a blue jacket in March and lost it in April.
The committee meets on the first Tuesday of each month at 3 in the afternoon.
"We won!" shouted the captain, holding the trophy above his head.
Sales in December were 18 percent higher than in November.
The lake freezes in January; by May the water is warm enough to swim.
The road (closed since Thursday) will reopen on Monday morning.
She wore a long black coat and a bright orange scarf.
After 3 hours of walking we reached the top of the hill.
The teacher asked, "Who can tell me the capital of Spain?"
Every morning he was jogging, stretching and lifting weights before work.
The harvest begins in August and ends in late October.
The band played for 2 hours on Saturday night without a break.
The letter, dated 21 June 1944, was found in an old box.
A grey cloud hung over the town (as it often did in winter).
"Please sit down," said the doctor. "This will only take a minute."
We moved to the city in July and started school in September.
The painting shows a red boat on a calm green sea.
The library opens at 8 on Wednesday and at 10 on Sunday.
Nobody was listening, so she stopped talking and started packing.
The company was founded in 1998 with only 5 employees.
"""


def pydoc_paragraphs(n: int = 80, seed: int = 0) -> list[str]:
    """Paragraphs of prose from the Python reference manual shipped with CPython."""
    import pydoc_data.topics as topics

    text = "\n".join(topics.topics[k] for k in sorted(topics.topics))
    paras = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", text)]
    paras = [p for p in paras if 20 <= len(p.split()) <= 120 and not p.startswith((">>>", "$"))]
    rng = np.random.default_rng(seed)
    return [paras[i] for i in sorted(rng.choice(len(paras), size=min(n, len(paras)), replace=False))]


def corpus(n_manual: int = 80, seed: int = 0) -> list[str]:
    """Hand-written sentences (in pairs) and reference-manual paragraphs, interleaved."""
    lines = [s for s in SENTENCES.splitlines() if s.strip()]
    pairs = [" ".join(lines[i : i + 2]) for i in range(0, len(lines), 2)]
    docs = pydoc_paragraphs(n_manual, seed)
    out = []
    for i in range(max(len(pairs), len(docs))):
        out += ([pairs[i]] if i < len(pairs) else []) + ([docs[i]] if i < len(docs) else [])
    return out


# ---- token-level helpers ----------------------------------------------------------------------
def words(tokens: Sequence[str]) -> list[tuple[str, list[int]]]:
    """Group tokens into words: (word, [token indices]); a word is a maximal run of letters/digits."""
    out: list[tuple[str, list[int]]] = []
    prev_alnum = False
    for i, t in enumerate(tokens):
        starts_word = bool(t) and not t[0].isalnum()
        if t.strip() and t.strip()[0].isalnum() and out and prev_alnum and not starts_word:
            out[-1] = (out[-1][0] + t, out[-1][1] + [i])
        elif t.strip() and t.strip()[0].isalnum():
            out.append((t.strip(), [i]))
        prev_alnum = bool(t) and t[-1].isalnum()
    return out


def word_rule(match: Callable[[str], float]) -> Callable[[Sequence[str]], np.ndarray]:
    """Value of each token = match(word it belongs to), 0 for tokens outside words."""

    def rule(tokens: Sequence[str]) -> np.ndarray:
        v = np.zeros(len(tokens))
        for w, idx in words(tokens):
            v[idx] = match(re.sub(r"[^\w]", "", w))
        return v

    return rule


def inside(open_ch: str, close_ch: str) -> Callable[[Sequence[str]], np.ndarray]:
    """1 for tokens strictly between an opening and a closing delimiter (delimiters excluded)."""

    def rule(tokens: Sequence[str]) -> np.ndarray:
        v, depth = np.zeros(len(tokens)), 0
        for i, t in enumerate(tokens):
            started = depth > 0
            for ch in t:
                if open_ch == close_ch and ch == open_ch:
                    depth = 1 - depth
                elif ch == open_ch:
                    depth += 1
                elif ch == close_ch:
                    depth = max(0, depth - 1)
            if started and depth > 0 and open_ch not in t and close_ch not in t and t.strip():
                v[i] = 1.0
        return v

    return rule


MONTHS = {"January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"}
WEEKDAYS = {"Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"}
COLOURS = {"red", "blue", "green", "yellow", "white", "black", "orange", "purple", "pink", "grey", "brown"}


@dataclass(frozen=True)
class SyntheticFeature:
    name: str
    """short id, e.g. "months" """
    explanation: str
    """the true explanation"""
    rule: Callable[[Sequence[str]], np.ndarray]
    """tokens -> values [n_tokens]"""
    kind: str
    """word-list | context | graded | or | and | noisy"""
    family: str = ""
    """features of one family explain each other in part (months, dates): not used as each other's controls"""
    drop: float = 0.0
    """label noise: each active token is switched off with this probability"""
    spurious: float = 0.0
    """label noise: each inactive token is switched on (value 1) with this probability"""

    def values(self, tokens: Sequence[str], text: int = 0) -> np.ndarray:
        v = np.asarray(self.rule(tokens), dtype=np.float64)
        if self.drop or self.spurious:
            rng = np.random.default_rng([text, len(self.name), sum(map(ord, self.name))])  # deterministic per text
            u = rng.random(len(v))
            v = np.where(v > 0, np.where(u < self.drop, 0.0, v), np.where(u < self.spurious, 1.0, 0.0))
        return v


def _and(a, b):
    return lambda toks: np.minimum(a(toks), b(toks))


def _or(a, b):
    return lambda toks: np.maximum(a(toks), b(toks))


months = word_rule(lambda w: float(w in MONTHS))
weekdays = word_rule(lambda w: float(w in WEEKDAYS))
colours = word_rule(lambda w: float(w.lower() in COLOURS))
quoted = inside('"', '"')
capital = word_rule(lambda w: float(w[:1].isupper()))

FEATURES = [
    SyntheticFeature("months", "names of months of the year (January, May, October)", months, "word-list", "dates"),
    SyntheticFeature("weekdays", "days of the week (Monday, Friday, Sunday)", weekdays, "word-list", "dates"),
    SyntheticFeature("colours", "colour words such as red, blue, green", colours, "word-list"),
    SyntheticFeature("numbers", "numbers written with digits", word_rule(lambda w: float(w.isdigit())), "word-list",
                     "digits"),
    SyntheticFeature("quoted", "words inside double quotation marks", quoted, "context", "quotes"),
    SyntheticFeature("parens", "words inside parentheses", inside("(", ")"), "context"),
    SyntheticFeature("ing", "words ending in -ing, like running or singing",
                     word_rule(lambda w: float(len(w) > 4 and w.lower().endswith("ing"))), "word-list"),
    SyntheticFeature("digit_value", "digits, stronger for larger digits (9 strongest, 0 weakest)",
                     lambda toks: np.array([float(t.strip()) + 1 if t.strip().isdigit() and len(t.strip()) == 1 else 0.0
                                            for t in toks]), "graded", "digits"),
    SyntheticFeature("word_length", "long words, stronger the longer the word",
                     word_rule(lambda w: max(0.0, len(w) - 7.0)), "graded"),
    SyntheticFeature("dates", "dates: month names or days of the week", _or(months, weekdays), "or", "dates"),
    SyntheticFeature("quoted_capital", "capitalised words inside quotation marks", _and(quoted, capital), "and", "quotes"),
    SyntheticFeature("months_noisy", "names of months of the year (January, May, October)", months, "noisy", "dates",
                     drop=0.1, spurious=0.002),
]
BY_NAME = {f.name: f for f in FEATURES}


def tokenize_corpus(tokenizer, texts: Sequence[str], max_tokens: int = 96) -> list[list[str]]:
    """Token strings of each text (no special tokens), truncated to max_tokens."""
    return [[tokenizer.decode([i]) for i in tokenizer(t, add_special_tokens=False)["input_ids"][:max_tokens]] for t in texts]


def feature_sequences(feature: SyntheticFeature, tokens: Sequence[Sequence[str]]) -> Sequences:
    """The feature's values on tokenized texts, in the form examples.make_windows takes."""
    return Sequences([list(t) for t in tokens], [feature.values(t, i) for i, t in enumerate(tokens)])


def demo_section(subject, con) -> dict:
    """`make demo`: the default (trained) simulator predicts a synthetic feature (months) from its true and from
    a wrong explanation."""
    from rich.table import Table

    from ..metrics import pearson
    from .simulator import simulator_from

    t0 = time.perf_counter()
    sim = simulator_from("default", subject)
    f, wrong = BY_NAME["months"], BY_NAME["parens"].explanation
    tokens = tokenize_corpus(subject.tokenizer, [t for t in corpus() if "January" in t][:1], max_tokens=32)
    truth = [f.values(t) for t in tokens]
    pred_true = sim.simulate(f.explanation, tokens)  # one forward pass per window
    pred_wrong = sim.simulate(wrong, tokens)
    cat = np.concatenate
    r_true, r_wrong = pearson(cat(pred_true), cat(truth)), pearson(cat(pred_wrong), cat(truth))
    table = Table(title=f"autointerp: {type(sim).__name__} predicts the feature '{f.name}' from an explanation (0..10)")
    for col in ("token", "true", f"sim: {f.explanation[:28]}", f"sim: {wrong}"):
        table.add_column(col)
    flat = [(t, v, a, b) for ts, vs, ps, qs in zip(tokens, truth, pred_true, pred_wrong) for t, v, a, b in zip(ts, vs, ps, qs)]
    for t, v, a, b in sorted(flat, key=lambda x: -x[2])[:6]:
        table.add_row(repr(t), f"{v:.0f}", f"{a:.2f}", f"{b:.2f}")
    con.print(table)
    fmt = lambda r: "undefined" if r is None else f"{r:+.3f}"  # noqa: E731
    con.print(f"Pearson r with the true activations: true explanation {fmt(r_true)}, wrong explanation {fmt(r_wrong)} "
              f"({sum(map(len, tokens))} tokens, {time.perf_counter() - t0:.1f}s)")
    return {"feature": f.name, "simulator": type(sim).__name__, "r_true": r_true, "r_wrong": r_wrong,
            "tokens": sum(map(len, tokens)), "seconds": round(time.perf_counter() - t0, 2)}
