"""Training and evaluation data with known answers: rules (rules.py) applied to real text.

    build_trainset("runs/simdata", data_dir="/path/to/shared/ao", tokenizer=subject.tokenizer)

writes, each file atomically (a finished file is skipped when the build runs again):

    train.jsonl         rules of the training families on the training text sources
    heldout.jsonl       rules of the held-out families on the held-out text sources
    seen_newtext.jsonl  rules of the training families on the held-out text sources
    meta.json           the build's config (families, sources, sizes)

Every line is a feature in the store-free format (formats.py) plus what the rule knows:
{"id", "rule", "family", "explanation", "explanations", "scale", "windows": [{"tokens", "values"}]};
`scale` is the rule's max over its whole text pool (values are normalised to 0..10 by it).
Training windows also carry `contrast`: another rule's values on the same tokens (one that fires in
the window when there is one), so that every window is seen under two explanations with different
answers and the simulator must read the explanation to tell them apart.

Text sources: "news" (news snippets), "pydoc" (CPython's reference manual) and "wordnet" (the usage
examples of WordNet's glosses, when Debian's wordnet-base is installed) for training; "claims"
(one-line common-sense claims) and "sentences" (hand-written everyday sentences) held out.
With WordNet present the training rules also get one rule per WordNet noun category picked from
the training text (wordnet.categories, families "wn_<lexicographer file>"); categories of the
held-out families' concepts (animals, body, locations, peoples and languages) and the held-out word
lists themselves are excluded. With `list_rules`, the training rules also get rules that fire on a
few words (or symbols) the explanation names (rules.listed_rules, family "lists"); such a rule may
name one word of the held-out lists (a token of an unseen concept is then positive in training
under an explanation that names it, never under one that names its category). `data_dir` is the root holding `classification_datasets/`; without it
only pydoc, WordNet and the hand-written sentences are used (and the built-in word lists).
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from ..io import atomic_write_json, write_jsonl
from .rules import (BUILTIN, Rule, after, category_rules, in_list, listed_rules, make_rules, mn, mx, quoted_last,
                    repeated_from_previous, repeated_word, sentence_end, word_lists)
from . import wordnet as wnet
from .synthetic import SENTENCES, pydoc_paragraphs

HOLDOUT = ("places", "nature", "compound")
TRAIN_SOURCES = ("news", "pydoc", "wordnet")
HELD_LISTS = ("countries", "cities", "nationalities", "animals", "weather", "body")
"""word lists of the held-out families: no WordNet category may contain their words"""
WN_SKIP_LEXFILES = ("tops", "animal", "body", "location", "object")
"""WordNet noun files skipped (the held-out concepts: animals, body parts, places and geography)"""
WN_SKIP_NAMES = ("inhabitant", "language", "national", "native", "foreigner", "European", "Asian", "African")
"""WordNet categories skipped by name (peoples and languages overlap nationalities)"""
TEST_SOURCES = ("claims", "sentences")
FRESH_SOURCES = ("claims", "sentences", "companies")
"""text of the fresh held-out set (build_fresh): the held-out sources and one never used before"""
FRESH_LEXFILES = ("animal", "body", "object", "location")
"""WordNet noun files of the fresh categories: files no training category was drawn from"""
FRESH_VAGUE = ("point", "area", "region", "structure", "unit", "country")
"""fresh noun categories left out: heads too vague to explain a feature, and "country" (the held-out
countries list again)"""
FRESH_NAMES = {"state": "American states", "land": "continents and islands", "organ": "organs of the body",
               "tissue": "body tissues", "body of water": "seas, rivers and lakes", "celestial body": "planets, stars and moons",
               "fish": "fish", "microorganism": "microbes and germs"}
"""how a person would say a fresh category whose WordNet head reads oddly (fixed before any was simulated)"""
FRESH_VERB_LEXFILES = ("communication", "motion", "cognition", "perception", "creation", "emotion", "competition")
"""the verb files of the fresh set's verb categories (what verb_categories gave it; no training rule may use them)"""
THIRD_VERB_LEXFILES = ("consumption", "body", "weather")
"""verb files of the third held-out set (build_third; no training rule may use them)"""
THIRD_SOURCES = ("tense", "latentqa")
"""text of the third held-out set: everyday sentences of the tense dataset and the question-and-answer
dialogues of latentqa's eval split, which no autointerp set had read"""
STAGE6_VERB_LEXFILES = ("contact", "change", "possession", "social")
"""verb files planned for the stage-6 training families (research/autointerp-trained-scorers.md)"""
FRESH_VERB_SKIP = ("like", "mean", "use", "apply", "employ", "utilize", "base", "desert", "duck", "crow", "ring", "sign",
                   "train", "can", "will", "may", "must", "might", "shall", "need", "want", "don")
"""verbs left out of every verb category: mostly used as another part of speech, or as a modal ("don" is
what the words of "don't" count as)"""


@dataclass(frozen=True)
class BuildConfig:
    """What build_trainset makes."""

    holdout: tuple[str, ...] = HOLDOUT
    """rule families left out of train.jsonl"""
    window: int = 32
    """tokens per window"""
    max_tokens: int = 256
    """tokens kept per text"""
    windows_per_feature: int = 12
    """windows per feature line"""
    active_share: float = 0.5
    """share of a line's windows drawn from windows where the rule fires"""
    foreign_share: float = 0.25
    """share drawn from windows where ANOTHER rule fires (with this rule's values there), so the
    simulator cannot guess the rule from what a window holds and must read the explanation"""
    train_lines_per_rule: int = 40
    """feature lines per training rule"""
    eval_lines_per_rule: int = 2
    """feature lines per rule in the evaluation files"""
    noise_share: float = 0.1
    """share of training lines with label noise (10% of active tokens off, 0.5% of others on)"""
    n_pydoc: int = 600
    """reference-manual paragraphs"""
    seed: int = 0
    """sampling seed"""
    wordnet_dir: str | None = str(wnet.WORDNET_DIR)
    """WordNet's database files (skipped when absent or None)"""
    wordnet_texts: int = 1500
    """training texts made of WordNet usage examples (8 examples each)"""
    wordnet_categories: int = 70
    """WordNet category rules added to the training families"""
    contrast: bool = True
    """give every training window a second rule's values (see module doc)"""
    list_rules: int = 0
    """listed-word rules added to the training families (rules.listed_rules, family "lists")"""
    list_lines_per_rule: int = 6
    """feature lines per listed-word rule"""
    list_heldout_words: bool = True
    """may a listed-word rule name (at most) one word of the held-out families' lists"""
    verb_lexfiles: tuple[str, ...] = ()
    """WordNet verb files whose verb categories join the training families (extra_training_rules; none
    by default; the stage-6 plan names STAGE6_VERB_LEXFILES)"""
    position_rules: bool = False
    """add the word after a comma and the first word inside parentheses to the training families"""


def _csv_column(path: Path, column: str) -> list[str]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [row[column].strip() for row in csv.DictReader(f) if row.get(column, "").strip()]


def text_sources(data_dir: str | Path | None, n_pydoc: int = 600, wn=None, n_wordnet: int = 0) -> dict[str, list[str]]:
    """Texts per source name (sources whose files are absent are empty). `wn` (wordnet.read_wordnet())
    gives `n_wordnet` texts of 8 usage examples each."""
    ex = wnet.example_sentences(wn) if wn is not None and n_wordnet else []
    if ex:
        order = np.random.default_rng(7).permutation(len(ex))
        ex = [" ".join(ex[j][:1].upper() + ex[j][1:] + "." for j in order[i : i + 8])
              for i in range(0, min(len(ex), 8 * n_wordnet), 8)]
    root = Path(data_dir) / "classification_datasets" if data_dir else None
    claims = _csv_column(root / "gmt" / "common_claim_true_false.csv", "statement") if root else []
    companies = _csv_column(root / "gmt" / "companies_true_false.csv", "statement") if root else []
    lines = [s for s in SENTENCES.splitlines() if s.strip()]
    tense = list(dict.fromkeys(_csv_column(root / "tense" / "tense.csv", "sentence"))) if root else []
    qa_path = Path(data_dir) / "latentqa_datasets" / "eval" / "qa.json" if data_dir else None
    qa = ([" ".join(f"{q} {a}" for q, a in pairs) for pairs in json.loads(qa_path.read_text()).values()]
          if qa_path is not None and qa_path.is_file() else [])
    return {
        "news": [" ".join(t.split()) for t in _csv_column(root / "engels" / "139_news_class_Politics.csv", "prompt")]
        if root else [],
        "pydoc": pydoc_paragraphs(n_pydoc, seed=1),
        "claims": [" ".join(claims[i : i + 4]) for i in range(0, len(claims), 4)],  # 4 claims per text
        "sentences": [" ".join(lines[i : i + 3]) for i in range(0, len(lines), 3)],
        "wordnet": ex,
        "companies": [" ".join(companies[i : i + 4]) for i in range(0, len(companies), 4)],
        "tense": [" ".join(tense[i : i + 4]) for i in range(0, len(tense), 4)],
        "latentqa": qa,
    }


def tokenize(tokenizer, texts: Sequence[str], max_tokens: int) -> list[list[str]]:
    """Token strings of each text (no special tokens), truncated."""
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [tokenizer.batch_decode([[i] for i in row[:max_tokens]]) for row in ids]


def windows_of(texts: list[list[str]], rule: Rule, window: int) -> list[tuple[list[str], np.ndarray]]:
    """(tokens, values) of every full-ish window (>= 8 tokens) of every text; the rule sees the whole text.
    The windows are the same, in the same order, for every rule."""
    out = []
    for toks in texts:
        v = rule.values(toks)
        for s in range(0, len(toks), window):
            if len(toks) - s >= 8:
                out.append((toks[s : s + window], v[s : s + window]))
    return out


class Contrast(NamedTuple):
    """Every training rule's windows, for the contrast examples."""

    rules: list[Rule]
    """the rules"""
    wins: list[list]
    """per rule, windows_of(texts, rule) (the same windows for every rule)"""
    scales: np.ndarray
    """[n_rules] each rule's max value"""
    fires: np.ndarray
    """[n_rules, n_windows] bool: the rule fires somewhere in the window"""


def contrast_pool(rules: Sequence[Rule], wins: dict) -> Contrast:
    ws = [wins[r.name] for r in rules]
    fires = np.array([[v.max() > 0 for _, v in w] for w in ws])
    scales = np.array([max((float(v.max()) for _, v in w), default=0.0) for w in ws])
    return Contrast(list(rules), ws, scales, fires)


def feature_lines(rule: Rule, wins, n_lines: int, cfg: BuildConfig, rng: np.random.Generator, tag: str,
                  noise: bool, foreign: Sequence[np.ndarray] = (), contrast: Contrast | None = None) -> list[dict]:
    """n_lines feature lines of cfg.windows_per_feature windows each: active_share from windows where
    the rule fires, foreign_share from `foreign` (per other rule, the indices of its active windows),
    the rest uniformly random. With `contrast`, each window also gets a rule of another family (one
    firing in it when there is one) with its values there."""
    if not wins:
        return []
    scale = max(float(v.max()) for _, v in wins)
    active = [i for i, (_, v) in enumerate(wins) if v.max() > 0]
    if scale <= 0 or not active:
        return []
    n_act = max(1, round(cfg.windows_per_feature * cfg.active_share))
    n_for = round(cfg.windows_per_feature * cfg.foreign_share) if len(foreign) else 0
    out = []
    for j in range(n_lines):
        a = rng.choice(active, size=min(n_act, len(active)), replace=False)
        fo = [int(rng.choice(foreign[int(k)])) for k in rng.integers(0, len(foreign), n_for)]
        r = rng.choice(len(wins), size=cfg.windows_per_feature - len(a) - len(fo), replace=False)
        rows = []
        noisy = noise and rng.random() < cfg.noise_share
        for i in list(a) + fo + list(r):
            toks, v = wins[i]
            if noisy:
                u = rng.random(len(v))
                v = np.where(v > 0, np.where(u < 0.1, 0.0, v), np.where(u < 0.005, scale, 0.0))
            row = {"tokens": list(toks), "values": [round(float(x), 4) for x in v]}
            if contrast is not None:
                ok = np.array([o.family != rule.family and contrast.scales[k] > 0 for k, o in enumerate(contrast.rules)])
                firing = np.flatnonzero(ok & contrast.fires[:, i])
                k = int(rng.choice(firing if len(firing) else np.flatnonzero(ok)))
                o = contrast.rules[k]
                row["contrast"] = {"rule": o.name, "explanations": list(o.explanations),
                                   "scale": float(contrast.scales[k]),
                                   "values": [round(float(x), 4) for x in contrast.wins[k][i][1]]}
            rows.append(row)
        out.append({"id": f"{rule.name}/{tag}/{j}", "rule": rule.name, "family": rule.family,
                    "explanation": rule.explanations[0], "explanations": list(rule.explanations), "scale": scale,
                    "noisy": bool(noisy), "windows": rows})
    return out


def build_trainset(out: str | Path, tokenizer, data_dir: str | Path | None = None, cfg: BuildConfig = BuildConfig(),
                   rules: Sequence[Rule] | None = None) -> dict[str, Path]:
    """Write train.jsonl, heldout.jsonl, seen_newtext.jsonl and meta.json under `out` (see module doc)."""
    out = Path(out)
    rel = Path(data_dir) / "classification_datasets" / "relations" if data_dir else None
    lists = word_lists(rel)
    rules = list(rules) if rules is not None else make_rules(lists)
    wn = wnet.read_wordnet(cfg.wordnet_dir) if cfg.wordnet_dir else None
    srcs = text_sources(data_dir, cfg.n_pydoc, wn, cfg.wordnet_texts)
    extra: list[Rule] = []  # WordNet categories and listed words: training families only
    seen_words = wnet.word_counts(t for s in TRAIN_SOURCES for t in srcs[s])
    held_words = set().union(*(lists[k] for k in HELD_LISTS))
    if wn is not None and cfg.wordnet_categories:
        cats = [c for c in wnet.categories(wn, seen_words, held_words, WN_SKIP_LEXFILES, limit=cfg.wordnet_categories + 20)
                if c.name not in WN_SKIP_NAMES][: cfg.wordnet_categories]
        extra = category_rules(cats)
    extra += extra_training_rules(seen_words, cfg.verb_lexfiles, cfg.position_rules,
                                  cfg.wordnet_dir if wn is not None else None)
    lines_per = {}
    if cfg.list_rules:
        counts = seen_words
        if not cfg.list_heldout_words:
            held_low = {h.lower() for h in held_words}
            counts = {w: c for w, c in counts.items() if w.lower() not in held_low}
        lists_ = listed_rules(counts, cfg.list_rules, cfg.seed, capped=held_words)
        extra += lists_
        lines_per = {r.name: cfg.list_lines_per_rule for r in lists_}
    train_texts = tokenize(tokenizer, [t for s in TRAIN_SOURCES for t in srcs[s]], cfg.max_tokens)
    test_texts = tokenize(tokenizer, [t for s in TEST_SOURCES for t in srcs[s]], cfg.max_tokens)
    plan = {
        "train.jsonl": ([r for r in rules if r.family not in cfg.holdout] + extra, train_texts, cfg.train_lines_per_rule, True),
        "heldout.jsonl": ([r for r in rules if r.family in cfg.holdout], test_texts, cfg.eval_lines_per_rule, False),
        "seen_newtext.jsonl": ([r for r in rules if r.family not in cfg.holdout], test_texts, cfg.eval_lines_per_rule,
                               False),
    }
    paths, counts = {}, {}
    for name, (rs, texts, n, noise) in plan.items():
        path = paths[name] = out / name
        if path.exists():
            continue
        rng = np.random.default_rng([cfg.seed, len(name)])
        wins = {r.name: windows_of(texts, r, cfg.window) for r in rs}
        act = {r.name: np.array([i for i, (_, v) in enumerate(wins[r.name]) if v.max() > 0]) for r in rs}
        pool = contrast_pool(rs, wins) if noise and cfg.contrast else None
        lines = []
        for r in rs:
            foreign = [act[o.name] for o in rs if o.family != r.family and len(act[o.name])] if noise else []
            lines += feature_lines(r, wins[r.name], lines_per.get(r.name, n), cfg, rng, name[:5], noise, foreign, pool)
        if name == "train.jsonl":
            rng.shuffle(lines)
        write_jsonl(path, lines)
        counts[name] = len(lines)
    atomic_write_json(out / "meta.json", {"config": asdict(cfg), "sources": {k: len(v) for k, v in srcs.items()},
                                          "rules": [{"name": r.name, "family": r.family, "explanations": list(r.explanations)}
                                                    for r in rules + extra],
                                          "lines": counts, "tokenizer": getattr(tokenizer, "name_or_path", "")})
    return paths


def _phrasings(name: str, ex: Sequence[str], last: str) -> tuple[str, ...]:
    """A category's four phrasings: its name, with two and with three of its members, and `last`."""
    return (name, f"{name} like {ex[0]} or {ex[1]}", f"{name} ({', '.join(ex[:3])})", last)


def _grammar() -> set[str]:
    """Function words no verb category may hold."""
    return set().union(*(BUILTIN[k] for k in ("pronouns", "articles", "prepositions", "conjunctions", "modals",
                                              "be_verbs", "negations", "question_words")))


def _verb_categories(counts, wordnet_dir: str | Path, **kw) -> list[wnet.VerbCategory]:
    """wordnet.verb_categories without function words and FRESH_VERB_SKIP (kw: its other arguments)."""
    return wnet.verb_categories(wordnet_dir, counts, exclude=_grammar() | set(FRESH_VERB_SKIP), **kw)


def _verb_rules(cats: Sequence[wnet.VerbCategory], family: str) -> list[Rule]:
    """One rule per verb category, every verb form ("<family>_<lexfile>")."""
    return [Rule(f"{family}_{c.lexfile}", family, _phrasings(c.name, c.seen[:3], f"{c.name} in any form"),
                 in_list(set(c.words))) for c in cats]


def extra_training_rules(counts, verb_lexfiles: Sequence[str], position: bool,
                         wordnet_dir: str | Path | None = wnet.WORDNET_DIR, min_seen: int = 6,
                         max_share: float = 0.02) -> list[Rule]:
    """Training families of kinds the first two held-out sets found missing: WordNet verb categories of
    `verb_lexfiles` with all verb forms (family "wn_verbs"; no held-out set's verb file may be named) and,
    with `position`, the word after a comma and the first word inside parentheses ("position").
    min_seen, max_share: as wordnet.verb_categories."""
    held = set(FRESH_VERB_LEXFILES) | set(THIRD_VERB_LEXFILES)
    clash = set(verb_lexfiles) & held
    if clash:
        raise ValueError(f"verb files {sorted(clash)} belong to a held-out set (FRESH_VERB_LEXFILES, "
                         f"THIRD_VERB_LEXFILES); pick from {sorted(set(wnet.VERB_LEXFILES.values()) - held)}")
    out = []
    if verb_lexfiles and wordnet_dir:
        skip = set(wnet.VERB_LEXFILES.values()) - set(verb_lexfiles)
        out += _verb_rules(_verb_categories(counts, wordnet_dir, skip=skip, min_seen=min_seen, max_share=max_share,
                                            limit=len(verb_lexfiles)), "wn_verbs")
    if position:
        out.append(Rule("after_comma", "position", ("the word after a comma", "the first word following a comma",
                                                    "words right after ','", "what comes after a comma"),
                        after(lambda w: w.endswith(","))))
        out.append(Rule("paren_first", "position", ("the first word inside parentheses",
                                                    "the word right after an opening bracket",
                                                    "words just after '('", "the start of a parenthetical remark"),
                        after(lambda w: w.endswith("("))))
    return out


def fresh_rules(counts, lists: dict[str, set[str]], wordnet_dir: str | Path = wnet.WORDNET_DIR, n_nouns: int = 10,
                n_verbs: int = 7, max_held_overlap: float = 0.2, window: int = 32) -> list[Rule]:
    """The fresh held-out set's rules (build_fresh), in families used neither in training nor in the
    first held-out set: WordNet noun categories of FRESH_LEXFILES whose members seen in `counts` share
    at most `max_held_overlap` with the held-out lists ("fresh_<lexfile>"); WordNet verb categories
    with all verb forms ("fresh_verbs": "verbs of movement"); repeated words and the last word of a
    sentence ("fresh_context", repeats counted within each `window`); an AND and an OR of those ("fresh_compound"). [] of the WordNet
    parts when WordNet is absent."""
    wn = wnet.read_wordnet(wordnet_dir)
    held = {w.lower() for k in HELD_LISTS for w in lists[k]}
    nouns = []
    if wn is not None:
        skip = set(wnet.LEXFILES.values()) - set(FRESH_LEXFILES)
        for c in wnet.categories(wn, counts, exclude_lexfiles=skip, limit=60):
            if c.name in FRESH_VAGUE or sum(w.lower() in held for w in c.seen) > max_held_overlap * len(c.seen):
                continue
            name = FRESH_NAMES.get(c.name, " ".join(c.name.split()[:-1] + [wnet.plural(c.name.split()[-1])]))
            head = {c.name, wnet.plural(c.name)}
            ex = [w for i, w in enumerate(c.seen) if w.lower() not in head and w.lower() not in
                  {x.lower() for x in c.seen[:i]} and not (w.endswith("s") and w[:-1] in c.seen)][:3]
            nouns.append(Rule(f"fresh_{c.name.replace(' ', '_')}", f"fresh_{c.lexfile}",
                              _phrasings(name, ex, f"words for {name}"), in_list(set(c.words))))
            if len(nouns) == n_nouns:
                break
    grammar = _grammar()
    verbs = _verb_categories(counts, wordnet_dir, limit=n_verbs)
    out = nouns + _verb_rules(verbs, "fresh_verbs")
    out.append(Rule("fresh_repeats", "fresh_context", ("words repeated from earlier in the text",
                                                       "a word that already appeared before", "repeated words",
                                                       "the second time a word occurs"),
                    repeated_word(window, sorted(grammar))))
    out.append(Rule("fresh_sentence_end", "fresh_context", ("the last word of a sentence",
                                                            "the word just before a full stop",
                                                            "sentence-final words", "the word before . or ?"),
                    sentence_end))
    motion = next((c for c in verbs if c.lexfile == "motion"), None)
    if motion is not None:
        past = {w for w in motion.words if w.endswith("ed") or w in {"went", "came", "ran", "fell", "flew", "rose",
                                                                    "left", "swam", "drove", "rode", "fled", "led"}}
        out.append(Rule("fresh_motion_past", "fresh_compound",
                        ("verbs of movement in the past tense", "past forms of motion verbs (walked, went, fell)",
                         "movement verbs like moved or ran", "how something moved: past tense"),
                        mn(in_list(motion.words), in_list(past))))
    two = [r for r in nouns if r.family == "fresh_animal"][:2]
    if len(two) == 2:
        a, b = two[0].explanations[0], two[1].explanations[0]
        out.append(Rule("fresh_animal_or", "fresh_compound", (f"{a} or {b}", f"{a} and {b}", f"either {a} or {b}"),
                        mx(two[0].fn, two[1].fn)))
    return out


def build_fresh(out: str | Path, tokenizer, data_dir: str | Path | None = None, cfg: BuildConfig = BuildConfig(),
                n_nouns: int = 10, n_verbs: int = 7) -> Path:
    """Write `out`/heldout.jsonl (and fresh_meta.json): fresh_rules on the FRESH_SOURCES text,
    cfg.eval_lines_per_rule lines per rule, in the same format as build_trainset's heldout.jsonl (so
    benchmarks/autointerp.py runs on it with --data `out`). A second held-out set, built after every
    reading rule had been chosen, so that nothing was tuned on it."""
    out = Path(out)
    path = out / "heldout.jsonl"
    if path.exists():
        return path
    rel = Path(data_dir) / "classification_datasets" / "relations" if data_dir else None
    lists = word_lists(rel)
    srcs = text_sources(data_dir, 0)
    raw = [t for s in FRESH_SOURCES for t in srcs[s]]
    rules = fresh_rules(wnet.word_counts(raw), lists, cfg.wordnet_dir or wnet.WORDNET_DIR, n_nouns, n_verbs,
                        window=cfg.window)
    return _write_heldout(out, "fresh", rules, tokenize(tokenizer, raw, cfg.max_tokens), cfg, 11,
                          {s: len(srcs[s]) for s in FRESH_SOURCES})


def _write_heldout(out: Path, tag: str, rules: Sequence[Rule], texts: list[list[str]], cfg: BuildConfig, seed_tag: int,
                   sources: dict[str, int]) -> Path:
    """Write out/heldout.jsonl (cfg.eval_lines_per_rule lines per rule, ids "<rule>/<tag>/<j>", sampled with
    seed [cfg.seed, seed_tag]) and out/<tag>_meta.json (config, sources, rules with how many windows each
    fires in, lines): the held-out sets build_fresh and build_third write."""
    rng = np.random.default_rng([cfg.seed, seed_tag])
    lines, active = [], {}
    for r in rules:
        wins = windows_of(texts, r, cfg.window)
        active[r.name] = int(sum(v.max() > 0 for _, v in wins))
        lines += feature_lines(r, wins, cfg.eval_lines_per_rule, cfg, rng, tag, False)
    write_jsonl(out / "heldout.jsonl", lines)
    atomic_write_json(out / f"{tag}_meta.json", {"config": asdict(cfg), "sources": sources,
                                                 "rules": [{"name": r.name, "family": r.family, "active_windows": active[r.name],
                                                            "explanations": list(r.explanations)} for r in rules],
                                                 "lines": len(lines)})
    return out / "heldout.jsonl"


def third_rules(counts, lists: dict[str, set[str]], wordnet_dir: str | Path = wnet.WORDNET_DIR, n_adj: int = 8,
                max_list_overlap: float = 0.2, window: int = 32) -> list[Rule]:
    """The third held-out set's rules (build_third), of kinds no training rule and no earlier set holds:
    WordNet verb categories of THIRD_VERB_LEXFILES with enough members seen ("third_verbs"); WordNet
    adjective clusters (wordnet.adjective_categories) whose seen members share at most `max_list_overlap`
    with any word list of rules.py ("third_adjectives"); the last word inside quotation marks and words
    repeated from the previous sentence ("third_context", sentences read within each `window`); an AND
    (verbs of eating and drinking in the -ing form) and an OR (the first two adjective clusters) of those
    ("third_compound"). [] of the WordNet parts when WordNet is absent."""
    grammar = _grammar()
    skip = set(wnet.VERB_LEXFILES.values()) - set(THIRD_VERB_LEXFILES)
    verbs = _verb_categories(counts, wordnet_dir, skip=skip, limit=len(THIRD_VERB_LEXFILES))
    listed = {w.lower() for ws in lists.values() for w in ws}  # word_lists() holds the built-in lists too
    adjs = [c for c in wnet.adjective_categories(wordnet_dir, counts, exclude=grammar, limit=4 * n_adj)
            if sum(w in listed for w in c.seen) <= max_list_overlap * len(c.seen)][:n_adj]
    out = _verb_rules(verbs, "third_verbs")
    for c in adjs:
        ex = [w for w in c.seen if w != c.name][:3]
        out.append(Rule(f"third_adj_{c.name}", "third_adjectives",
                        _phrasings(f"adjectives meaning {c.name}", ex, f"words that mean {c.name}"), in_list(set(c.words))))
    out.append(Rule("third_quoted_last", "third_context", ("the last word inside quotation marks",
                                                           "the word just before a closing quote",
                                                           "the final word of a quotation", "the end of quoted text"),
                    quoted_last))
    out.append(Rule("third_repeat_previous", "third_context", ("words repeated from the previous sentence",
                                                               "a word the sentence before also used",
                                                               "words carried over from the last sentence",
                                                               "repeats of the previous sentence's words"),
                    repeated_from_previous(window, sorted(grammar))))
    eat = next((c for c in verbs if c.lexfile == "consumption"), None)
    if eat is not None:
        out.append(Rule("third_eating_ing", "third_compound",
                        ("verbs of eating and drinking in the -ing form", "eating or drinking verbs ending in -ing",
                         "-ing forms of verbs like eat or drink", "consuming, as an -ing verb"),
                        mn(in_list(eat.words), in_list({w for w in eat.words if w.endswith("ing")}))))
    if len(adjs) >= 2:
        a, b = (c.name for c in adjs[:2])
        out.append(Rule("third_adj_or", "third_compound", (f"adjectives meaning {a} or {b}", f"words for {a} or {b} things",
                                                           f"either {a} or {b} adjectives"),
                        mx(in_list(set(adjs[0].words)), in_list(set(adjs[1].words)))))
    return out


def build_third(out: str | Path, tokenizer, data_dir: str | Path | None = None, cfg: BuildConfig = BuildConfig(),
                n_adj: int = 8) -> Path:
    """Write `out`/heldout.jsonl (and third_meta.json): third_rules on the THIRD_SOURCES text,
    cfg.eval_lines_per_rule lines per rule, in build_trainset's heldout.jsonl format. The third held-out
    set, built after the stage-6 simulator was trained (research/autointerp-trained-scorers.md), so that
    neither simulator nor any reading rule was chosen on it."""
    out = Path(out)
    path = out / "heldout.jsonl"
    if path.exists():
        return path
    rel = Path(data_dir) / "classification_datasets" / "relations" if data_dir else None
    lists = word_lists(rel)
    srcs = text_sources(data_dir, 0)
    raw = [t for s in THIRD_SOURCES for t in srcs[s]]
    if not raw:
        raise FileNotFoundError(f"no third-set text under {data_dir!r}: it needs classification_datasets/tense/"
                                "tense.csv or latentqa_datasets/eval/qa.json (pass the shared data root)")
    rules = third_rules(wnet.word_counts(raw), lists, cfg.wordnet_dir or wnet.WORDNET_DIR, n_adj, window=cfg.window)
    return _write_heldout(out, "third", rules, tokenize(tokenizer, raw, cfg.max_tokens), cfg, 13,
                          {s: len(srcs[s]) for s in THIRD_SOURCES})
