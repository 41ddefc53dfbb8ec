"""Numbers that judge a reading: AUROC, Pearson r, balanced accuracy; `None` when undefined.

An undefined score (one class missing, a constant side) is `None`, never 0.5, 0.0 or NaN, and
`mean_defined` leaves it out of averages. `why_undefined` says why, for reports.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float | None:
    """Area under the ROC curve (ties count half); None when either class is missing."""
    s, y = np.asarray(scores, np.float64).ravel(), np.asarray(labels, bool).ravel()
    if len(s) != len(y):
        raise ValueError(f"auroc: {len(s)} scores but {len(y)} labels")
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return None
    # rank-sum form (Mann-Whitney U), O(n log n); average ranks give ties half
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[y].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def pearson(pred: Sequence[float], true: Sequence[float]) -> float | None:
    """Pearson r; None when either side is constant or there are fewer than 2 values."""
    p, t = np.asarray(pred, np.float64).ravel(), np.asarray(true, np.float64).ravel()
    if len(p) != len(t):
        raise ValueError(f"pearson: {len(p)} predictions but {len(t)} true values")
    if len(p) < 2 or p.std() == 0 or t.std() == 0:
        return None
    return float(np.corrcoef(p, t)[0, 1])


def balanced_accuracy(scores: Sequence[float], labels: Sequence[int], threshold: float = 0.5) -> float | None:
    """Mean of the true-positive and true-negative rates at `threshold`; None when a class is missing."""
    s, y = np.asarray(scores, np.float64).ravel(), np.asarray(labels, bool).ravel()
    if not y.any() or y.all():
        return None
    pred = s > threshold
    return float((pred[y].mean() + (~pred[~y]).mean()) / 2)


def why_undefined(metric: str, scores: Sequence[float], labels: Sequence[float]) -> str | None:
    """A reason string for an undefined score (None when it is defined)."""
    s, y = np.asarray(scores, np.float64).ravel(), np.asarray(labels, np.float64).ravel()
    if metric == "pearson":
        if len(s) < 2:
            return f"fewer than 2 values ({len(s)})"
        if y.std() == 0:
            return f"true values are constant ({y[0] if len(y) else '-'})"
        if s.std() == 0:
            return f"predictions are constant ({s[0]})"
        return None
    n_pos = int((y > 0).sum())
    if n_pos == 0:
        return "no positive examples"
    if n_pos == len(y):
        return "no negative examples"
    return None


def mean_defined(values: Iterable[float | None]) -> float | None:
    """Mean over the defined values (None left out); None when none is defined."""
    vals = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else None
