"""Examples of a feature: ~32-token windows of text with the feature's value at every token.

    seqs = feature_sequences(store, feature, tokenizer)     # per text: token strings + values
    wins = make_windows(seqs, window=32)
    sets = make_examples(wins, ExampleConfig())             # {"train"|"val"|"test": ExampleSet}

Splits are by text (a hash of the text index), so no text lends windows to two splits. Per split:
top windows (by max value), quantile-stratified activating windows, random windows (mostly
inactive for a sparse feature), random non-activating windows, and hard negatives: non-activating
windows that contain the tokens the feature fires on elsewhere.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import numpy as np
import torch

SPLITS = ("train", "val", "test")


@dataclass
class Window:
    tokens: list[str]
    """decoded token strings"""
    values: np.ndarray
    """[len(tokens)] the feature's value at each token"""
    text: int = 0
    """index of the text it comes from"""
    start: int = 0
    """position of its first token in that text"""

    @property
    def max(self) -> float:
        return float(self.values.max()) if len(self.values) else 0.0


class Sequences(NamedTuple):
    tokens: list[list[str]]
    """per text, its token strings"""
    values: list[np.ndarray]
    """per text, [n_tokens] feature values"""


@dataclass(frozen=True)
class ExampleConfig:
    window: int = 32
    """tokens per window (texts are cut into non-overlapping windows)"""
    min_window: int = 8
    """a text's last, shorter window is kept if it has at least this many tokens"""
    threshold: float = 0.0
    """a window is activating when its max value exceeds this (see activation_threshold)"""
    negative_quantile: float = 0.25
    """dense features (fewer than n_negative windows at or below `threshold`): the threshold becomes this
    quantile of the window maxima, so the weakest windows serve as negatives"""
    split_fractions: tuple[float, float, float] = (0.5, 0.25, 0.25)
    """train / val / test shares of the texts"""
    n_top: int = 10
    """top windows per split"""
    n_quantiles: int = 4
    """strata of activating windows (by max value)"""
    n_per_quantile: int = 3
    """windows drawn from each stratum"""
    n_random: int = 10
    """uniformly random windows per split"""
    n_negative: int = 6
    """random non-activating windows per split"""
    n_hard: int = 6
    """hard negatives per split"""
    seed: int = 0
    """sampling seed"""


@dataclass
class ExampleSet:
    top: list[Window] = field(default_factory=list)
    quantiles: list[list[Window]] = field(default_factory=list)
    random: list[Window] = field(default_factory=list)
    negative: list[Window] = field(default_factory=list)
    hard_negative: list[Window] = field(default_factory=list)
    threshold: float = 0.0
    """the activation threshold these sets were drawn with (activation_threshold)"""

    @property
    def stratified(self) -> list[Window]:
        return [w for q in self.quantiles for w in q]

    @property
    def activating(self) -> list[Window]:
        """top + stratified, without duplicates"""
        seen, out = set(), []
        for w in self.top + self.stratified:
            if (w.text, w.start) not in seen:
                seen.add((w.text, w.start))
                out.append(w)
        return out


def show_token(t: str) -> str:
    """A token as one printable cell: newlines and tabs escaped."""
    return t.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def decode_tokens(tokenizer, ids: Sequence[int]) -> list[str]:
    return [tokenizer.decode([int(i)]) for i in ids]


@torch.no_grad()
def feature_sequences(store, feature, tokenizer, verify: bool = False) -> Sequences:
    """Per text, the token strings and the feature's value at each token, from an ActivationStore.

    The store must hold all positions (capture with positions="all").
    """
    if store.manifest.positions != "all":
        raise ValueError(f"examples need a store captured with positions='all'; {store.path} has {store.manifest.positions!r}")
    ids: dict[int, list[tuple[int, int, float]]] = {}
    for acts, index in store.iter_shards(feature.site, with_index=True, verify=verify):
        vals = feature(acts).float()  # [rows]
        for t, p, i, v in zip(index["text_idx"].tolist(), index["positions"].tolist(), index["token_ids"].tolist(), vals.tolist()):
            ids.setdefault(t, []).append((p, i, v))
    tokens, values = [], []
    for t in sorted(ids):
        rows = sorted(ids[t])
        tokens.append(decode_tokens(tokenizer, [i for _, i, _ in rows]))
        values.append(np.array([v for _, _, v in rows], dtype=np.float64))
    return Sequences(tokens, values)


def make_windows(seqs: Sequences, window: int = 32, min_window: int = 8) -> list[Window]:
    out = []
    for t, (toks, vals) in enumerate(zip(seqs.tokens, seqs.values)):
        if len(toks) != len(vals):
            raise ValueError(f"text {t}: {len(toks)} tokens but {len(vals)} values")
        for s in range(0, len(toks), window):
            if len(toks) - s >= min(min_window, len(toks)):
                out.append(Window(list(toks[s : s + window]), np.asarray(vals[s : s + window], dtype=np.float64), t, s))
    return out


def split_of(text: int, fractions: Sequence[float], seed: int = 0) -> str:
    """Deterministic split of a text index: hash -> [0, 1) -> train | val | test."""
    u = int(hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()[:12], 16) / 16**12
    edges = np.cumsum(fractions) / sum(fractions)
    return SPLITS[min(int(np.searchsorted(edges, u, side="right")), 2)]


def hard_negatives(pool: list[Window], top: list[Window], threshold: float, n: int) -> list[Window]:
    """Non-activating windows that share the most tokens with what the feature fires on."""
    fire = {t.strip().lower() for w in top for t, v in zip(w.tokens, w.values) if v > threshold and t.strip()}
    context = {t.strip().lower() for w in top for t in w.tokens if t.strip()}

    def key(w: Window):
        toks = {t.strip().lower() for t in w.tokens if t.strip()}
        return (len(toks & fire), len(toks & context) / max(1, len(toks | context)))

    ranked = sorted(pool, key=key, reverse=True)
    return [w for w in ranked[:n] if key(w) > (0, 0)]


def activation_threshold(windows: Sequence[Window], cfg: ExampleConfig) -> float:
    """cfg.threshold, or for a dense feature (fewer than cfg.n_negative windows at or below it) the
    cfg.negative_quantile quantile of the window maxima."""
    maxes = np.array([w.max for w in windows]) if windows else np.zeros(0)
    if len(maxes) and (maxes <= cfg.threshold).sum() < cfg.n_negative:
        return max(cfg.threshold, float(np.quantile(maxes, cfg.negative_quantile)))
    return cfg.threshold


def make_examples(windows: list[Window], cfg: ExampleConfig = ExampleConfig()) -> dict[str, ExampleSet]:
    rng = np.random.default_rng(cfg.seed)
    thr = activation_threshold(windows, cfg)
    by_split: dict[str, list[Window]] = {s: [] for s in SPLITS}
    for w in windows:
        by_split[split_of(w.text, cfg.split_fractions, cfg.seed)].append(w)
    out = {}
    for split, wins in by_split.items():
        ex = ExampleSet(threshold=thr)
        active = sorted([w for w in wins if w.max > thr], key=lambda w: -w.max)
        inactive = [w for w in wins if w.max <= thr]
        ex.top = active[: cfg.n_top]
        rest = active[cfg.n_top :]
        if rest and cfg.n_quantiles > 0:
            # strata of equal size by rank (the rest is sorted by max, descending)
            for stratum in np.array_split(np.arange(len(rest)), cfg.n_quantiles):
                if len(stratum):
                    pick = rng.choice(stratum, size=min(cfg.n_per_quantile, len(stratum)), replace=False)
                    ex.quantiles.append([rest[i] for i in sorted(pick)])
        if wins:
            ex.random = [wins[i] for i in rng.choice(len(wins), size=min(cfg.n_random, len(wins)), replace=False)]
        if inactive:
            ex.negative = [inactive[i] for i in rng.choice(len(inactive), size=min(cfg.n_negative, len(inactive)), replace=False)]
            taken = {(w.text, w.start) for w in ex.negative}
            ex.hard_negative = hard_negatives([w for w in inactive if (w.text, w.start) not in taken], ex.top, thr, cfg.n_hard)
        out[split] = ex
    return out


def normalise(values: np.ndarray, max_value: float, scale: int = 10) -> np.ndarray:
    """Values on the 0..scale integer scale used in prompts (negative -> 0, max_value -> scale)."""
    if max_value <= 0:
        return np.zeros_like(values, dtype=np.int64)
    return np.clip(np.round(scale * np.asarray(values) / max_value), 0, scale).astype(np.int64)
