"""Word categories from WordNet 3.0 (Debian's `wordnet-base`, read from its plain-text database files).

    wn = read_wordnet()                                   # None when the files are absent
    cats = categories(wn, counts, exclude=held_out_words) # [Category]: "musical instruments" -> words
    texts = example_sentences(wn)                         # the quoted usage examples of the glosses

A noun belongs to a category when its MOST FREQUENT sense (the first synset index.noun lists for it)
lies under the category's synset by hypernym (or instance-hypernym) links, so "bank" is not filed as
a container by a rare sense. Categories are picked by how the words occur in a text (`counts`):
enough distinct members seen, not so common that they cover everything, little overlap between
picked categories. Only single-word lemmas are kept; plurals are added by a plain English rule.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Iterable, NamedTuple

WORDNET_DIR = Path("/usr/share/wordnet")
LEXFILES = {3: "tops", 4: "act", 5: "animal", 6: "artifact", 7: "attribute", 8: "body", 9: "cognition",
            10: "communication", 11: "event", 12: "feeling", 13: "food", 14: "group", 15: "location", 16: "motive",
            17: "object", 18: "person", 19: "phenomenon", 20: "plant", 21: "possession", 22: "process",
            23: "quantity", 24: "relation", 25: "shape", 26: "state", 27: "substance", 28: "time"}


class Synset(NamedTuple):
    lexfile: str
    """lexicographer file, e.g. "artifact" """
    lemmas: tuple[str, ...]
    """its words, "_" for spaces, in WordNet's order"""
    up: tuple[str, ...]
    """offsets of its hypernyms and instance hypernyms"""
    gloss: str
    """definition and quoted examples"""


class WordNet(NamedTuple):
    synsets: dict[str, Synset]
    """noun synsets by offset"""
    first_sense: dict[str, str]
    """lemma -> offset of its most frequent noun sense"""
    tagged: dict[str, int]
    """lemma -> how many of its senses were seen in the sense-tagged corpus (a frequency proxy)"""
    other_pos: dict[str, int]
    """lemma -> the same count for its verb, adjective and adverb senses (a noun mostly used as
    another part of speech, like "over" or "can", is left out of the categories)"""


class Category(NamedTuple):
    name: str
    """the synset's first lemma, e.g. "musical instrument" """
    lexfile: str
    """WordNet lexicographer file of the synset (a coarse family)"""
    words: frozenset[str]
    """member words (lower case; proper nouns keep their capital), plurals included"""
    seen: tuple[str, ...]
    """members that occur in the counted text, most frequent first"""


def _index_counts(path: Path) -> dict[str, tuple[int, list[str]]]:
    """lemma -> (tagged sense count, synset offsets most frequent first) from an index.<pos> file ({} when
    absent)."""
    out = {}
    if path.is_file():
        for line in open(path, encoding="utf-8", errors="replace"):
            if not line.startswith("  "):  # licence header
                f = line.split()
                n_ptr = int(f[3])
                offs = f[4 + n_ptr + 2 :]
                if len(offs) != int(f[2]):
                    raise ValueError(f"{path}: {len(offs)} synsets where the line says {f[2]}: {line.strip()!r}")
                out[f[0]] = (int(f[4 + n_ptr + 1]), offs)
    return out


def _exceptions(path: Path, max_bases: int | None = None) -> dict[str, set[str]]:
    """base -> its irregular forms from a <pos>.exc file ("went go": go -> {went}); lines naming more than
    `max_bases` bases are skipped ({} when the file is absent)."""
    out: dict[str, set[str]] = {}
    if path.is_file():
        for line in open(path, encoding="utf-8", errors="replace"):
            f = line.split()
            if len(f) >= 2 and (max_bases is None or len(f) - 1 <= max_bases):
                for base in f[1:]:
                    out.setdefault(base, set()).add(f[0])
    return out


def read_wordnet(root: str | Path = WORDNET_DIR) -> WordNet | None:
    """The noun part of WordNet under `root`, or None when its files are not there."""
    root = Path(root)
    if not (root / "data.noun").is_file() or not (root / "index.noun").is_file():
        return None
    synsets: dict[str, Synset] = {}
    for line in open(root / "data.noun", encoding="utf-8", errors="replace"):
        if line.startswith("  "):  # licence header
            continue
        head, _, gloss = line.partition(" | ")
        f = head.split()
        n = int(f[3], 16)
        lemmas = tuple(re.sub(r"\(.*\)$", "", f[4 + 2 * i]) for i in range(n))
        p = 4 + 2 * n
        n_ptr = int(f[p])
        ptrs = [f[p + 1 + 4 * i : p + 5 + 4 * i] for i in range(n_ptr)]
        up = tuple(off for sym, off, pos, _ in ptrs if sym in ("@", "@i") and pos == "n")
        synsets[f[0]] = Synset(LEXFILES.get(int(f[1]), f[1]), lemmas, up, gloss.strip())
    nouns = _index_counts(root / "index.noun")
    first = {lemma: offs[0] for lemma, (_, offs) in nouns.items()}
    tagged = {lemma: n for lemma, (n, _) in nouns.items()}
    other: dict[str, int] = {}
    for pos in ("verb", "adj", "adv"):
        for lemma, (n, _) in _index_counts(root / f"index.{pos}").items():
            other[lemma] = other.get(lemma, 0) + n
    return WordNet(synsets, first, tagged, other)


def plural(w: str) -> str:
    if re.search(r"(s|x|z|ch|sh)$", w):
        return w + "es"
    if re.search(r"[^aeiou]y$", w):
        return w[:-1] + "ies"
    return w + "s"


def members(wn: WordNet) -> dict[str, set[str]]:
    """Synset offset -> the single-word lemmas whose most frequent sense lies under it (itself included)."""
    out: dict[str, set[str]] = {}
    for off, syn in wn.synsets.items():
        for lemma in syn.lemmas:
            key = lemma.lower()
            if (not re.fullmatch(r"[A-Za-z]{3,}", lemma) or wn.first_sense.get(key) != off
                    or wn.other_pos.get(key, 0) >= max(1, wn.tagged.get(key, 0))):
                continue
            seen, todo = set(), [off]
            while todo:
                o = todo.pop()
                if o in seen:
                    continue
                seen.add(o)
                out.setdefault(o, set()).add(lemma)
                todo += wn.synsets[o].up if o in wn.synsets else ()
    return out


def lower_counts(counts: Counter) -> Counter:
    """The same counts with every word lower-cased (the counts of "The" and "the" summed)."""
    low: Counter = Counter()
    for w, n in counts.items():
        low[w.lower()] += n
    return low


def word_counts(texts: Iterable[str]) -> Counter:
    """How often each word (a run of letters) occurs."""
    c: Counter = Counter()
    for t in texts:
        c.update(re.findall(r"[A-Za-z]+", t))
    return c


def categories(wn: WordNet, counts: Counter, exclude: Iterable[str] = (), exclude_lexfiles: Iterable[str] = (),
               min_seen: int = 6, max_seen: int = 80, max_words: int = 800, min_count: int = 30,
               max_share: float = 0.02, max_overlap: float = 0.25,
               max_excluded: float = 0.2, limit: int = 80) -> list[Category]:
    """Categories worth a rule, most distinct members seen in the text first.

    exclude: words no category may hold (removed; a category losing more than `max_excluded` of its
    seen members is dropped: it is the excluded concept). exclude_lexfiles: lexicographer files skipped.
    A category needs `min_seen`..`max_seen` distinct members in `counts` (at most `max_words` in all), `min_count` occurrences, at most
    `max_share` of all words, a head word that is common (seen in WordNet's tagged corpus), and at
    most `max_overlap` Jaccard overlap (of seen members) with any category picked before it."""
    low = lower_counts(counts)
    total = sum(counts.values())
    excl = {w.lower() for w in exclude}
    skip = set(exclude_lexfiles)
    cands = []
    for off, lemmas in members(wn).items():
        syn = wn.synsets[off]
        head = syn.lemmas[0]
        if syn.lexfile in skip or not re.fullmatch(r"[a-z_]+", head) or wn.tagged.get(head, 0) < 1:
            continue
        words = set()
        for w in lemmas:
            proper = w[:1].isupper()
            words |= {w} if proper else {w.lower(), plural(w.lower())}
        seen_all = [w for w in words if (counts[w] if w[:1].isupper() else low[w]) > 0]
        dropped = [w for w in seen_all if w.lower() in excl]
        seen = sorted(set(seen_all) - set(dropped), key=lambda w: (-(counts[w] if w[:1].isupper() else low[w]), w))
        n = sum(counts[w] if w[:1].isupper() else low[w] for w in seen)
        if (not min_seen <= len(seen) <= max_seen or len(words) > max_words or n < min_count or n > max_share * total
                or len(dropped) > max_excluded * max(1, len(seen_all))):
            continue
        words = frozenset(w for w in words if w.lower() not in excl)
        cands.append(Category(head.replace("_", " "), syn.lexfile, words, tuple(seen)))
    cands.sort(key=lambda c: (-len(c.seen), c.name))
    picked: list[Category] = []
    for c in cands:
        s = set(c.seen)
        if c.name in {p.name for p in picked}:
            continue
        if all(len(s & set(p.seen)) / len(s | set(p.seen)) <= max_overlap for p in picked):
            picked.append(c)
        if len(picked) == limit:
            break
    return picked


def example_sentences(wn: WordNet) -> list[str]:
    """The quoted usage examples in the noun glosses (natural sentences, one per string)."""
    out = []
    for syn in wn.synsets.values():
        for m in re.findall(r'"([^"]{20,200})"', syn.gloss):
            out.append(m.strip())
    return out


VERB_LEXFILES = {29: "body", 30: "change", 31: "cognition", 32: "communication", 33: "competition", 34: "consumption",
                 35: "contact", 36: "creation", 37: "emotion", 38: "motion", 39: "perception", 40: "possession",
                 41: "social", 42: "stative", 43: "weather"}
VERB_NAMES = {"body": "verbs about the body", "change": "verbs of change", "cognition": "verbs of thinking",
              "communication": "verbs of speaking and communicating", "competition": "verbs of fighting and competing",
              "consumption": "verbs of eating and drinking", "contact": "verbs of touching and hitting",
              "creation": "verbs of making and creating", "emotion": "verbs of feeling",
              "motion": "verbs of movement", "perception": "verbs of seeing and hearing",
              "possession": "verbs of having, buying and giving", "social": "verbs of social life",
              "stative": "verbs of being", "weather": "weather verbs"}
"""a natural name for the verbs of each lexicographer file"""


def verb_forms(lemma: str, irregular: dict[str, set[str]] | None = None) -> set[str]:
    """A verb's forms: base, -s, -ed, -ing by plain English rules (final e, consonant + y, a doubled
    final consonant after a short vowel), and WordNet's irregular forms (verb.exc) when given."""
    w = lemma.lower()
    cvc = re.fullmatch(r"[^aeiou]*[aeiou][^aeiouwxy]", w)  # one short vowel: stop -> stopped
    s = w + "es" if w.endswith("o") else plural(w)  # go -> goes
    if w.endswith("ee"):
        ed, ing = w + "d", w + "ing"
    elif w.endswith("e"):
        ed, ing = w + "d", w[:-1] + "ing"
    elif re.search(r"[^aeiou]y$", w):
        ed, ing = w[:-1] + "ied", w + "ing"
    elif cvc:
        ed, ing = w + w[-1] + "ed", w + w[-1] + "ing"
    else:
        ed, ing = w + "ed", w + "ing"
    return {w, s, ed, ing} | (irregular or {}).get(w, set())


class VerbCategory(NamedTuple):
    name: str
    """how the category is said, e.g. "verbs of movement" """
    lexfile: str
    """WordNet verb lexicographer file, e.g. "motion" """
    words: frozenset[str]
    """every form of every member verb (lower case)"""
    seen: tuple[str, ...]
    """member lemmas that occur (in some form) in the counted text, most frequent first"""


def verb_categories(root: str | Path, counts: Counter, exclude: Iterable[str] = (), min_seen: int = 6,
                    min_tagged: int = 3, max_share: float = 0.02,
                    skip: Iterable[str] = ("stative", "change", "contact", "social", "possession", "body", "weather"),
                    limit: int = 8) -> list[VerbCategory]:
    """One category per verb lexicographer file ("verbs of movement": walk, run, fly, ...): the single-word
    verbs whose most frequent verb sense is filed there, seen at least `min_tagged` times as a verb in
    WordNet's sense-tagged corpus (cntlist.rev) and more often as a verb than as anything else, with
    all their forms (verb_forms, irregular ones from verb.exc). `exclude`: lemmas left out (function
    words). `skip`: broad files left out. Files with fewer than `min_seen` members seen in `counts`, or
    whose forms make up more than `max_share` of its words, are dropped; the rest come most members seen
    first. [] when WordNet's files are absent."""
    root = Path(root)
    if not (root / "cntlist.rev").is_file():
        return []
    verb: dict[str, Counter] = {}  # lemma -> tagged count per verb lexfile
    other: Counter = Counter()  # lemma -> tagged count as a noun, adjective or adverb
    for line in open(root / "cntlist.rev", encoding="utf-8", errors="replace"):
        key, _, n = line.split()
        lemma, _, lex = key.partition("%")
        kind, filenum = lex.split(":")[:2]
        if kind == "2":
            verb.setdefault(lemma, Counter())[VERB_LEXFILES.get(int(filenum), filenum)] += int(n)
        else:
            other[lemma] += int(n)
    irregular = _exceptions(root / "verb.exc", max_bases=1)
    excl = {w.lower() for w in exclude}
    by_file: dict[str, set[str]] = {}
    for lemma, c in verb.items():
        n = sum(c.values())
        if re.fullmatch(r"[a-z]{2,}", lemma) and lemma not in excl and n >= min_tagged and n > other[lemma]:
            by_file.setdefault(c.most_common(1)[0][0], set()).add(lemma)
    low = lower_counts(counts)
    total = sum(counts.values())
    skip = set(skip)
    out = []
    for lf, lemmas in by_file.items():
        if lf in skip:
            continue
        forms = {v: verb_forms(v, irregular) for v in lemmas}
        seen = sorted((v for v in lemmas if any(low[x] for x in forms[v])), key=lambda v: (-sum(low[x] for x in forms[v]), v))
        words = frozenset().union(*forms.values())
        if len(seen) >= min_seen and sum(low[x] for x in words) <= max_share * total:
            out.append(VerbCategory(VERB_NAMES.get(lf, f"verbs of {lf}"), lf, words, tuple(seen)))
    return sorted(out, key=lambda c: -len(c.seen))[:limit]  # ties keep the tagged-count file order


class AdjCategory(NamedTuple):
    name: str
    """the head adjective, e.g. "large" """
    words: frozenset[str]
    """member adjectives (lower case) and their irregular forms (adj.exc: "bigger", "best")"""
    seen: tuple[str, ...]
    """members that occur in the counted text, most frequent first"""


def adjective_categories(root: str | Path, counts: Counter, exclude: Iterable[str] = (), min_seen: int = 4,
                         min_count: int = 12, max_share: float = 0.02, limit: int = 8) -> list[AdjCategory]:
    """One category per WordNet adjective cluster: a head adjective and its satellites ("large": big, huge,
    vast, ...). An adjective belongs to the cluster of its most frequent sense (the first synset
    index.adj lists for it: the head itself or a satellite pointing to it by "&") when it is a single
    word of 3+ letters and seen in WordNet's tagged corpus more often as an adjective than as a noun,
    verb or adverb, and is not a form of a WordNet verb other than its base (no participles: "given",
    "boring"). `exclude`: words left out. Clusters with fewer than `min_seen` members seen in
    `counts`, occurring fewer than `min_count` times in all, or whose words make up more than `max_share` of all words, are dropped; the rest come
    most members seen first (ties by name). [] when WordNet's files are absent."""
    root = Path(root)
    if not (root / "data.adj").is_file() or not (root / "index.adj").is_file():
        return []
    head_of: dict[str, str] = {}  # synset offset -> its cluster's head offset
    head_name: dict[str, str] = {}
    for line in open(root / "data.adj", encoding="utf-8", errors="replace"):
        if line.startswith("  "):
            continue
        f = line.split(" | ")[0].split()
        n = int(f[3], 16)
        p = 4 + 2 * n
        ptrs = [f[p + 1 + 4 * i : p + 5 + 4 * i] for i in range(int(f[p]))]
        if f[2] == "a":
            head_of[f[0]] = f[0]
            head_name[f[0]] = re.sub(r"\(.*\)$", "", f[4])
        else:  # satellite: "&" points to its head
            up = [off for sym, off, pos, _ in ptrs if sym == "&"]
            if up:
                head_of[f[0]] = up[0]
    adj = _index_counts(root / "index.adj")
    index = {pos: _index_counts(root / f"index.{pos}") for pos in ("noun", "verb", "adv")}
    other: Counter = Counter()
    for rows in index.values():
        for lemma, (n, _) in rows.items():
            other[lemma] += n
    excl = {w.lower() for w in exclude}
    verb_exc = _exceptions(root / "verb.exc", max_bases=1)
    for v in index["verb"]:  # participles ("given", "boring") are verbs' forms, left out
        if re.fullmatch(r"[a-z]+", v):
            excl |= verb_forms(v, verb_exc) - {v, plural(v)}
    clusters: dict[str, set[str]] = {}
    for lemma, (n, offs) in adj.items():
        if re.fullmatch(r"[a-z]{3,}", lemma) and lemma not in excl and n > other[lemma] and offs[0] in head_of:
            clusters.setdefault(head_of[offs[0]], set()).add(lemma)
    irregular = _exceptions(root / "adj.exc")
    low = lower_counts(counts)
    total = sum(counts.values())
    out = []
    for off, lemmas in clusters.items():
        name = head_name.get(off, "")
        if not re.fullmatch(r"[a-z]+", name):
            continue
        seen = sorted((w for w in lemmas if low[w]), key=lambda w: (-low[w], w))
        words = frozenset(lemmas | set().union(*(irregular.get(w, set()) for w in lemmas)))
        n = sum(low[x] for x in words)
        if len(seen) >= min_seen and min_count <= n <= max_share * total:
            out.append(AdjCategory(name, words, tuple(seen)))
    return sorted(out, key=lambda c: (-len(c.seen), c.name))[:limit]
