"""Rules with known answers: per-token activations defined by a rule a person can state, each with
several phrasings of its explanation, grouped in families so whole families can be held out.

    rs = make_rules(word_lists(data_dir))          # [Rule]; data_dir adds lists from relation files
    v = rs[0].values(["The", " cat", " sat"])      # [3] activations

Word-level rules mark EVERY token of a word (a word is a maximal run of letters/digits, as in
synthetic.words); character rules mark the tokens that hold the character; context rules mark the
tokens the context covers (delimiters excluded). Graded rules give larger values to stronger cases.

Families: places, food, time, nature, objects, sentiment, grammar (lexical categories), morphology,
orthography, context, graded, compound (OR / AND of rules of other families).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np

from .synthetic import inside, word_rule, words

Fn = Callable[[Sequence[str]], np.ndarray]

BUILTIN: dict[str, set[str]] = {
    "months": set("January February March April May June July August September October November December".split()),
    "weekdays": set("Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()),
    "time_units": set("second seconds minute minutes hour hours day days week weeks month months year years decade "
                      "decades century centuries morning evening night afternoon".split()),
    "colours": set("red blue green yellow white black orange purple pink grey gray brown violet golden silver".split()),
    "number_words": set("one two three four five six seven eight nine ten eleven twelve twenty thirty forty fifty "
                        "hundred thousand million billion dozen".split()),
    "countries": set("France Germany Italy Spain Portugal China Japan India Russia Brazil Mexico Canada Australia "
                     "Egypt Kenya Nigeria Argentina Chile Peru Greece Turkey Iran Iraq Israel Syria Poland Sweden Norway "
                     "Denmark Finland Ireland Scotland England Britain America Ukraine Korea Vietnam Thailand Pakistan "
                     "Afghanistan Indonesia Cuba Belgium Netherlands Switzerland Austria Hungary Colombia Venezuela "
                     "Lebanon Jordan Libya Sudan Ethiopia Somalia".split()),
    "cities": set("London Paris Berlin Rome Madrid Moscow Tokyo Beijing Shanghai Delhi Mumbai Cairo Sydney Toronto "
                  "Chicago Boston Washington Baghdad Jerusalem Tehran Kabul Athens Vienna Prague Dublin Lisbon Istanbul "
                  "Seoul Bangkok Manila Lagos Nairobi Houston Dallas Seattle Atlanta Miami Geneva Brussels".split()),
    "nationalities": set("French German Italian Spanish Chinese Japanese Indian Russian American British English "
                         "Canadian Mexican Brazilian Iraqi Iranian Israeli Palestinian Korean European African Asian "
                         "Arab Greek Turkish Polish Irish Scottish Australian Egyptian Syrian Afghan Pakistani".split()),
    "foods": set("bread cheese rice pasta pizza soup salad meat beef chicken pork fish eggs egg butter cake sugar "
                 "salt milk coffee tea chocolate apple apples banana bananas orange oranges potato potatoes tomato "
                 "tomatoes flour honey beans corn wheat fruit vegetables sandwich".split()),
    "animals": set("dog dogs cat cats horse horses cow cows bird birds fish lion tiger bear bears wolf fox mouse mice "
                   "rabbit snake eagle sheep goat pig pigs duck chicken monkey elephant whale shark insect insects "
                   "spider spiders ant ants bee bees".split()),
    "body": set("head hand hands arm arms leg legs foot feet eye eyes ear ears nose mouth face heart blood bone bones "
                "finger fingers skin hair brain teeth tooth neck back shoulder".split()),
    "family": set("mother father mom dad son daughter brother sister wife husband uncle aunt cousin grandmother "
                  "grandfather parents children child baby family".split()),
    "weather": set("rain snow wind storm sun sunny cloud clouds cloudy fog ice weather hurricane flood floods thunder "
                   "winter summer spring autumn".split()),
    "instruments": set("piano guitar violin drum drums trumpet flute cello saxophone harp clarinet bass organ".split()),
    "sports": set("football soccer baseball basketball tennis golf hockey cricket rugby boxing swimming cycling "
                  "racing marathon Olympics".split()),
    "tools": set("hammer knife saw drill screwdriver scissors wrench axe shovel needle pen pencil brush".split()),
    "vehicles": set("car cars bus buses train trains plane planes boat boats ship ships truck trucks bike bicycle "
                    "taxi helicopter".split()),
    "positive": set("good great happy joy love peace excellent wonderful success win won best hope kind beautiful "
                    "pleased glad".split()),
    "negative": set("bad sad angry hate war death dead killed kill fear terrible awful worst crisis attack failed "
                    "poor pain violence".split()),
    "pronouns": set("I you he she it we they me him her us them my your his its our their mine yours".split()),
    "articles": set("a an the".split()),
    "prepositions": set("in on at by for with from to of about into over under between through after before "
                        "during without".split()),
    "conjunctions": set("and or but so because although while if unless since".split()),
    "modals": set("can could will would shall should may might must".split()),
    "be_verbs": set("is are was were be been being am".split()),
    "negations": set("not no never nothing nobody none cannot nor".split()),
    "question_words": set("who what when where why how which whose".split()),
    "code_words": set("function class object method module value values variable variables string list dict "
                      "integer argument arguments exception return import type attribute".split()),
}

RELATION_LISTS = {  # list name -> (relation file, "subject" | "object")
    "countries": ("factual/country_capital_city.json", "subject"),
    "cities": ("factual/country_largest_city.json", "object"),
    "foods": ("factual/food_from_country.json", "subject"),
    "instruments": ("factual/person_plays_instrument.json", "object"),
    "sports": ("factual/person_plays_pro_sport.json", "object"),
    "tools": ("commonsense/task_done_by_tool.json", "object"),
    "colours": ("commonsense/fruit_outside_color.json", "object"),
}


def word_lists(data_dir: str | Path | None = None) -> dict[str, set[str]]:
    """The built-in word lists, extended with one-word names from the relation files under `data_dir`
    (the `classification_datasets/relations` folder of the shared data) when given."""
    lists = {k: set(v) for k, v in BUILTIN.items()}
    if data_dir is not None:
        root = Path(data_dir)
        for name, (rel, side) in RELATION_LISTS.items():
            path = root / rel
            if path.is_file():
                for s in json.loads(path.read_text())["samples"]:
                    w = s[side].strip()
                    if re.fullmatch(r"[A-Za-z]+", w):
                        lists[name].add(w if name in ("countries", "cities") else w.lower())
    return lists


@dataclass(frozen=True)
class Rule:
    """One feature with a known definition."""

    name: str
    """unique id, e.g. "countries" """
    family: str
    """family it belongs to (whole families are held out together)"""
    explanations: tuple[str, ...]
    """natural phrasings of what it fires on; the first is the canonical one"""
    fn: Fn
    """token strings -> [n_tokens] values (>= 0)"""
    kind: Literal["binary", "graded"] = "binary"
    """binary rules give 0/1, graded ones a range"""

    def values(self, tokens: Sequence[str]) -> np.ndarray:
        v = np.asarray(self.fn(tokens), dtype=np.float64)
        if v.shape != (len(tokens),):
            raise ValueError(f"rule {self.name}: {v.shape} values for {len(tokens)} tokens")
        return v


# ---- rule builders ------------------------------------------------------------------------------


def in_list(lst: set[str], case: bool = False) -> Fn:
    low = {w.lower() for w in lst}
    return word_rule(lambda w: float((w in lst) if case else (w.lower() in low)))


def char_rule(pred: Callable[[str], bool]) -> Fn:
    """1 for tokens whose stripped text satisfies pred."""
    return lambda tokens: np.array([float(bool(t.strip()) and pred(t.strip())) for t in tokens])


def after(pred: Callable[[str], bool], gap: int = 1) -> Fn:
    """1 for the word `gap` words after a word (or punctuation token) satisfying pred."""

    def fn(tokens: Sequence[str]) -> np.ndarray:
        v = np.zeros(len(tokens))
        units = [(t.strip(), [i]) for i, t in enumerate(tokens) if t.strip() and not t.strip()[0].isalnum()]
        units = sorted(units + [(w, idx) for w, idx in words(tokens)], key=lambda u: u[1][0])
        for j, (w, _) in enumerate(units):
            if pred(w) and j + gap < len(units) and units[j + gap][0][:1].isalnum():
                v[units[j + gap][1]] = 1.0
        return v

    return fn


def _words_and_stops(tokens: Sequence[str]) -> list[tuple[str, list[int]]]:
    """Words (synthetic.words) and the tokens ending in . ! or ?, in text order: (text, [token indices])."""
    stops = [(t.strip(), [i]) for i, t in enumerate(tokens) if t.strip() and t.strip()[-1] in ".!?"]
    return sorted(words(tokens) + stops, key=lambda u: u[1][0])


def _is_stop(w: str) -> bool:
    return w[-1:] in ".!?" and not w[:1].isalnum()


def sentence_start(tokens: Sequence[str]) -> np.ndarray:
    """1 for the first word of every sentence (after . ! ? or at the start of the text)."""
    v, start = np.zeros(len(tokens)), True
    for w, idx in _words_and_stops(tokens):
        if _is_stop(w):
            start = True
        elif start:
            v[idx], start = 1.0, False
    return v


def position_in_sentence(tokens: Sequence[str]) -> np.ndarray:
    """Graded: words late in a sentence get more (the word's index in its sentence, from 1)."""
    v, k = np.zeros(len(tokens)), 0
    for i, t in enumerate(tokens):
        if t.strip()[:1].isalnum():
            k += 1
            v[i] = min(k, 30)
        if any(ch in t for ch in ".!?"):
            k = 0
    return v


def digit_value(tokens: Sequence[str]) -> np.ndarray:
    return np.array([float(t.strip()) + 1 if len(t.strip()) == 1 and t.strip() in "0123456789" else 0.0 for t in tokens])


def repeated_word(span: int = 32, skip: Sequence[str] = ()) -> Fn:
    """1 for every token of a word (3+ letters, any case, not in `skip`) already seen earlier in the
    same block of `span` tokens (blocks start at token 0, span, 2*span, ...: trainset's windows, so
    that what a window shows is all the rule saw)."""
    skip_low = {w.lower() for w in skip}

    def fn(tokens: Sequence[str]) -> np.ndarray:
        v = np.zeros(len(tokens))
        seen: dict[int, set[str]] = {}
        for w, idx in words(tokens):
            key, block = w.lower(), idx[0] // span
            if len(key) >= 3 and key.isalpha() and key not in skip_low and idx[-1] // span == block:
                if key in seen.setdefault(block, set()):
                    v[idx] = 1.0
                seen[block].add(key)
        return v

    return fn


def sentence_end(tokens: Sequence[str]) -> np.ndarray:
    """1 for the last word before a sentence-ending . ! or ?"""
    v, last = np.zeros(len(tokens)), None
    for w, idx in _words_and_stops(tokens):
        if _is_stop(w):
            if last is not None:
                v[last] = 1.0
            last = None
        else:
            last = idx
    return v


QUOTES = {'"': None, "\u201c": True, "\u201d": False}
"""quotation marks: '"' opens or closes (whichever is due), the curly ones open (True) or close (False)"""


def quoted_last(tokens: Sequence[str]) -> np.ndarray:
    """1 for every token of the last word inside each pair of quotation marks (QUOTES), read character by
    character, so a quote joined to a word or to punctuation in one token counts."""
    v = np.zeros(len(tokens))
    word_of = {i: idx for _, idx in words(tokens) for i in idx}
    inside, last = False, None
    for i, t in enumerate(tokens):
        for ch in t:
            if ch in QUOTES:
                opens = QUOTES[ch] if QUOTES[ch] is not None else not inside
                if not opens and inside and last is not None:
                    v[last] = 1.0
                inside, last = opens, None
            elif ch.isalnum() and inside and i in word_of:
                last = word_of[i]
    return v


def repeated_from_previous(span: int = 32, skip: Sequence[str] = ()) -> Fn:
    """1 for every token of a word (3+ letters, any case, not in `skip`) that occurs in the sentence just
    before its own (sentences end at . ! or ?). As repeated_word, only the block of `span` tokens a word
    is in counts: a sentence begun in an earlier block is read from the block's start."""
    skip_low = {w.lower() for w in skip}

    def fn(tokens: Sequence[str]) -> np.ndarray:
        v = np.zeros(len(tokens))
        prev: set[str] = set()
        cur: set[str] = set()
        block = 0
        for w, idx in _words_and_stops(tokens):
            if idx[0] // span != block:
                block, prev, cur = idx[0] // span, set(), set()
            if _is_stop(w):
                prev, cur = cur, set()
                continue
            key = w.lower()
            if len(key) >= 3 and key.isalpha() and key not in skip_low and idx[-1] // span == block:
                if key in prev:
                    v[idx] = 1.0
                cur.add(key)
        return v

    return fn


def mx(a: Fn, b: Fn) -> Fn:
    return lambda t: np.maximum(a(t), b(t))


def mn(a: Fn, b: Fn) -> Fn:
    return lambda t: np.minimum(a(t), b(t))


def make_rules(lists: dict[str, set[str]] | None = None) -> list[Rule]:
    """Every rule, in families. `lists` from word_lists() (default: the built-in lists)."""
    L = lists or word_lists()
    R: list[Rule] = []

    def add(name, family, fn, *explanations, kind="binary"):
        R.append(Rule(name, family, tuple(explanations), fn, kind))

    # lexical categories
    add("countries", "places", in_list(L["countries"], True), "names of countries", "country names like France or Japan",
        "countries (Germany, Brazil, India)", "the name of a country")
    add("cities", "places", in_list(L["cities"], True), "names of cities", "city names such as London or Tokyo",
        "major cities (Paris, Chicago)", "the name of a city")
    add("nationalities", "places", in_list(L["nationalities"], True), "nationality adjectives (French, German)",
        "words for nationalities like American or Chinese", "adjectives of nationality")
    add("foods", "food", in_list(L["foods"]), "food words", "names of foods like bread, cheese or rice",
        "things people eat", "food and drink")
    add("animals", "nature", in_list(L["animals"]), "animals", "names of animals such as dog, horse or bird",
        "animal words (cat, lion, fish)")
    add("weather", "nature", in_list(L["weather"]), "weather and seasons", "words about the weather (rain, snow, wind)",
        "weather words and seasons like winter")
    add("body", "nature", in_list(L["body"]), "body parts", "parts of the body (hand, eye, heart)",
        "words for parts of the human body")
    add("months", "time", in_list(L["months"], True), "months of the year", "names of months (January, May)",
        "month names")
    add("weekdays", "time", in_list(L["weekdays"], True), "days of the week", "weekday names like Monday or Friday",
        "names of days (Tuesday, Sunday)")
    add("time_units", "time", in_list(L["time_units"]), "units of time", "words for time periods (day, hour, year)",
        "time words like minute, week, century")
    add("colours", "objects", in_list(L["colours"]), "colour words", "colours like red, blue and green",
        "names of colours")
    add("instruments", "objects", in_list(L["instruments"]), "musical instruments",
        "instruments such as piano or guitar", "names of musical instruments")
    add("sports", "objects", in_list(L["sports"]), "sports", "names of sports like football or tennis",
        "sports and games (golf, hockey)")
    add("vehicles", "objects", in_list(L["vehicles"]), "vehicles", "means of transport (car, train, plane)",
        "vehicle words like bus or boat")
    add("tools", "objects", in_list(L["tools"]), "tools", "hand tools such as hammer or knife", "names of tools")
    add("family", "objects", in_list(L["family"]), "family members", "words for relatives (mother, brother)",
        "kinship terms like father or daughter")
    add("positive", "sentiment", in_list(L["positive"]), "positive words", "words with a positive sentiment (good, happy)",
        "upbeat, happy words")
    add("negative", "sentiment", in_list(L["negative"]), "negative words", "words with negative sentiment (bad, war, fear)",
        "words about bad things: death, violence, fear")
    add("number_words", "objects", in_list(L["number_words"]), "numbers written as words",
        "number words like two, ten or hundred", "spelled-out numbers")
    add("pronouns", "grammar", in_list(L["pronouns"], True), "pronouns", "personal pronouns (he, she, they, it)",
        "pronouns like I, you, we")
    add("articles", "grammar", in_list(L["articles"]), "articles", "the words a, an and the", "the article 'the' or 'a'")
    add("prepositions", "grammar", in_list(L["prepositions"]), "prepositions", "prepositions such as in, on, of",
        "small linking words like to, from, with")
    add("conjunctions", "grammar", in_list(L["conjunctions"]), "conjunctions", "conjunctions (and, or, but)",
        "joining words like because or although")
    add("modals", "grammar", in_list(L["modals"]), "modal verbs", "modal verbs like can, would, should",
        "modals (may, might, must)")
    add("be_verbs", "grammar", in_list(L["be_verbs"]), "forms of the verb 'to be'", "is, are, was, were",
        "the verb be (is, was)")
    add("question_words", "grammar", in_list(L["question_words"]), "question words", "wh-words like who, what, why",
        "interrogative words (where, how)")
    add("code_words", "grammar", in_list(L["code_words"]), "programming terms", "words about code (function, class, value)",
        "technical Python vocabulary")
    # morphology
    add("ing", "morphology", word_rule(lambda w: float(len(w) > 4 and w.lower().endswith("ing"))),
        "words ending in -ing", "-ing words like running or singing", "present participles ending in ing")
    add("plural", "morphology", word_rule(lambda w: float(len(w) > 3 and w.islower() and w.endswith("s")
                                                       and not w.endswith(("ss", "us", "is")))),
        "plural nouns ending in -s", "plurals (dogs, houses)", "words ending in s")
    add("past_ed", "morphology", word_rule(lambda w: float(len(w) > 4 and w.lower().endswith("ed"))),
        "words ending in -ed", "past tense verbs ending in ed", "-ed forms like walked or played")
    add("ly", "morphology", word_rule(lambda w: float(len(w) > 4 and w.lower().endswith("ly"))),
        "adverbs ending in -ly", "words ending in ly (quickly, really)", "-ly adverbs")
    add("tion", "morphology", word_rule(lambda w: float(w.lower().endswith(("tion", "tions", "sion", "sions")))),
        "words ending in -tion", "nouns ending in tion or sion", "-tion words like nation or decision")
    add("prefix_un_re", "morphology", word_rule(lambda w: float(len(w) > 5 and w.lower().startswith(("un", "re")))),
        "words starting with un- or re-", "words with the prefix un or re", "un-/re- words (unable, return)")
    # orthography
    add("digits", "orthography", char_rule(lambda s: any(c.isdigit() for c in s)), "digits", "numbers written with digits",
        "numerals like 3 or 2019")
    add("capitalised", "orthography", word_rule(lambda w: float(w[:1].isupper())), "capitalised words",
        "words starting with a capital letter", "capitalized words and names")
    add("all_caps", "orthography", word_rule(lambda w: float(len(w) > 1 and w.isupper() and w.isalpha())),
        "words in all capital letters", "all-caps words and acronyms", "uppercase abbreviations like UN or USA")
    add("commas", "orthography", char_rule(lambda s: "," in s), "commas", "the comma character", "comma punctuation")
    add("periods", "orthography", char_rule(lambda s: s[-1:] in ".!?"), "sentence-ending punctuation",
        "full stops, question marks and exclamation marks", "the period at the end of a sentence")
    add("quote_marks", "orthography", char_rule(lambda s: '"' in s or "'" in s), "quotation marks",
        "quote characters", "the symbols \" and '")
    add("paren_chars", "orthography", char_rule(lambda s: "(" in s or ")" in s), "parentheses",
        "opening and closing brackets ( )", "parenthesis characters")
    add("hyphens", "orthography", char_rule(lambda s: "-" in s), "hyphens and dashes", "the - character",
        "hyphens")
    # context
    add("in_quotes", "context", inside('"', '"'), "words inside quotation marks", "quoted speech",
        "text between double quotes")
    add("in_parens", "context", inside("(", ")"), "words inside parentheses", "text in brackets",
        "parenthetical remarks")
    add("sentence_start", "context", sentence_start, "the first word of a sentence", "sentence-initial words",
        "words that begin a sentence")
    add("after_negation", "context", after(lambda w: w.lower() in L["negations"] or w.lower().endswith("n't")),
        "the word after a negation (not, never)", "words right after not or no", "what follows a negation")
    add("after_colon", "context", after(lambda w: w.endswith(":")), "the word after a colon",
        "the first word following a colon", "words right after ':'")
    add("after_the", "context", after(lambda w: w.lower() == "the"), "the word right after 'the'",
        "nouns following the article the", "words after the")
    add("after_number", "context", after(lambda w: w[:1].isdigit()), "the word right after a number",
        "words following digits (3 days, 40 years)", "the unit after a number")
    # graded
    add("word_length", "graded", word_rule(lambda w: max(0.0, len(w) - 6.0)), "long words, stronger the longer",
        "word length: longer words fire more", "very long words", kind="graded")
    add("digit_value", "graded", digit_value, "single digits, stronger for larger digits",
        "digits weighted by their value (9 highest)", "the value of a digit", kind="graded")
    add("sentence_position", "graded", position_in_sentence, "words late in a sentence, growing along it",
        "position within the sentence: later words fire more", "distance from the start of the sentence",
        kind="graded")
    add("number_size", "graded", word_rule(lambda w: float(np.log10(int(w) + 1) + 1) if re.fullmatch("[0-9]{1,9}", w) else 0.0),
        "numbers, stronger for larger numbers", "the magnitude of a number", "big numbers more than small ones",
        kind="graded")
    # compounds (OR / AND across families)
    add("dates", "compound", mx(in_list(L["months"], True), in_list(L["weekdays"], True)),
        "dates: months or days of the week", "month or weekday names", "calendar words (Monday, May)")
    add("places_or_nat", "compound", mx(in_list(L["countries"], True), in_list(L["nationalities"], True)),
        "countries or nationalities", "a country or its people (France, French)", "country names and nationality words")
    add("capital_in_quotes", "compound", mn(inside('"', '"'), word_rule(lambda w: float(w[:1].isupper()))),
        "capitalised words inside quotes", "capital letters in quoted speech", "quoted words that start with a capital")
    add("digits_in_parens", "compound", mn(inside("(", ")"), char_rule(lambda s: any(c.isdigit() for c in s))),
        "numbers inside parentheses", "digits in brackets, like (1998)", "parenthesised numbers")
    add("animals_or_food", "compound", mx(in_list(L["animals"]), in_list(L["foods"])), "animals or food",
        "animals and things to eat", "food or animal words")
    return R


def category_rules(cats) -> list[Rule]:
    """One rule per WordNet category (wordnet.categories), in the family "wn_<lexicographer file>";
    phrasings name the category and a few of its members seen in the text."""
    from .wordnet import plural

    out = []
    for c in cats:
        head = c.name.split()
        p = " ".join(head[:-1] + [plural(head[-1])])
        ex = [w for w in c.seen if not (w.endswith("s") and w[:-1] in c.seen)][:3] + ["", "", ""]
        out.append(Rule(f"wn_{c.name.replace(' ', '_')}", f"wn_{c.lexfile}",
                        (p, f"words for {p} like {ex[0]} or {ex[1]}", f"{p} ({', '.join(x for x in ex[:3] if x)})",
                         f"names of {p}"), in_list(set(c.words))))
    return out


FAMILIES = ("places", "food", "nature", "time", "objects", "sentiment", "grammar", "morphology", "orthography",
            "context", "graded", "compound")


LIST_SYMBOLS = tuple(",.;:()\"'-?!/=[]{}*%$#&+<>_")
"""the non-word tokens a listed-token rule may name"""


def _listed(items: Sequence[str], last: str) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {last} {items[-1]}"


def listed_rules(counts: dict[str, int], n: int, seed: int = 0, capped: Sequence[str] = (), max_capped: int = 1,
                 symbol_share: float = 0.15, min_count: int = 3) -> list[Rule]:
    """`n` rules that fire on a few words named in the explanation ("words like war, Iraq or voted"), or,
    for `symbol_share` of them, a few symbols ("the tokens ( or ;"), in the family "lists".

    The words are drawn from `counts` (word -> count in the training text, e.g. wordnet.word_counts)
    with probability proportional to sqrt(count), so frequent words are named too; words of `capped`
    (e.g. the held-out families' lists) appear at most `max_capped` times in one rule, so that no list
    spells out a category. These rules teach the simulator to read which tokens an explanation names:
    without them a token that is frequent in the training text but covered by no rule is always 0 in
    training and is never predicted, even when an explanation names it. The first phrasing is the
    explainer's examples phrase (explainer.examples_phrase)."""
    rng = np.random.default_rng([seed, 5])
    forms: dict[str, tuple[str, int]] = {}  # lower-case word -> (its most frequent surface form, total count)
    for w, c in counts.items():
        if len(w) < 2 or not w.isalpha():
            continue
        k = w.lower()
        best, tot = forms.get(k, (w, 0))
        forms[k] = (w if c > counts.get(best, 0) else best, tot + c)
    keys = sorted(k for k, (_, c) in forms.items() if c >= min_count)
    if not keys:
        return []
    p = np.sqrt([forms[k][1] for k in keys])
    p /= p.sum()
    cap = {w.lower() for w in capped}
    out = []
    for i in range(n):
        size = int(rng.choice([1, 2, 3, 4], p=[0.25, 0.3, 0.3, 0.15]))
        if rng.random() < symbol_share:
            syms = [str(s) for s in rng.choice(LIST_SYMBOLS, size=min(size, 3), replace=False)]
            names = _listed(syms, "or")
            out.append(Rule(f"list_sym_{i}", "lists", (f"the tokens {names}", f"the symbols {_listed(syms, 'and')}",
                                                         f"tokens that are {names}"),
                            char_rule(lambda s, ss=frozenset(syms): s in ss)))
            continue
        picked: list[str] = []
        for k in rng.choice(len(keys), size=4 * size + 8, p=p):
            w = keys[int(k)]
            if w in picked or (w in cap and sum(x in cap for x in picked) >= max_capped):
                continue
            picked.append(w)
            if len(picked) == size:
                break
        shown = [forms[w][0] for w in picked]
        if len(shown) == 1:
            ex = (f"words like {shown[0]}", f"the word {shown[0]}", f'"{shown[0]}"', f"mentions of {shown[0]}")
        else:
            ex = (f"words like {_listed(shown, 'or')}", f"the words {_listed(shown, 'and')}",
                  _listed([f'"{w}"' for w in shown], "or"), f"mentions of {_listed(shown, 'or')}")
        out.append(Rule(f"list_{i}", "lists", ex, in_list(set(picked))))
    return out
