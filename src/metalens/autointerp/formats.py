"""Store-free features: simulate and explain features given as JSONL lines, no activation store needed.

simulate:  {"id", "explanation", "windows": [{"tokens": [str], "values": [float]}]}   (values optional)
       ->  {"id", "r", "predictions": [[float] per window]}  r = Pearson over all tokens of the line's
           windows; null with a "reason" when undefined (no values given, a constant side)
explain:   {"id", "windows": [{"tokens": [str], "values": [float]}]}                 (values required)
       ->  {"id", "explanation", "score", "candidates": [{"text", "select_r"}], "split", "reason"?}

Explain splits a line's windows: activating windows (max above `threshold`) ranked by max go
round-robin explain, select, test until explain holds the N_ACTIVE (3) the explainer shows, then
select, test; the others likewise until explain holds N_QUIET (1). The explainer reads the explain
part, the simulator (its `selector`, simulator.selector_of) picks the best of k candidates on the
select part, and `score` is the chosen explanation's r on the test part. `split` lists the window
indices of each part.
Predictions align one for one with the given token strings (see simulator.py).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import DataError
from ..io import jsonl_objects
from ..metrics import pearson, why_undefined
from .explainer import N_ACTIVE, N_QUIET, select, simulation_r
from .simulator import selector_of


def _windows(where: str, obj: dict, need_values: bool) -> list[tuple[list[str], list[float] | None]]:
    wins = obj.get("windows")
    if not isinstance(wins, list) or not wins:
        raise DataError(f"{where}: 'windows' must be a non-empty list of {{\"tokens\": [...], \"values\": [...]}}")
    out = []
    for j, w in enumerate(wins):
        toks = w.get("tokens") if isinstance(w, dict) else None
        if not isinstance(toks, list) or not toks or not all(isinstance(t, str) for t in toks):
            raise DataError(f"{where}: windows[{j}].tokens must be a non-empty list of strings")
        vals = w.get("values")
        if vals is None and need_values:
            raise DataError(f"{where}: windows[{j}] has no 'values' (explain needs the activations)")
        if vals is not None:
            if not isinstance(vals, list) or len(vals) != len(toks):
                raise DataError(f"{where}: windows[{j}].values must be a list of {len(toks)} numbers (one per token)")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vals):
                raise DataError(f"{where}: windows[{j}].values holds a value that is not a finite number")
        out.append((toks, vals))
    return out


def _id(where: str, obj: dict):
    if not isinstance(obj.get("id"), (str, int)) or isinstance(obj.get("id"), bool):
        raise DataError(f"{where}: every line needs an 'id' (a string or an integer)")
    return obj["id"]


def read_simulate(path: str | Path) -> Iterator[tuple[str, object, str, list]]:
    """(file:line, id, explanation, windows) per line; DataError naming file:line on a bad line."""
    for where, obj in jsonl_objects(path):
        fid = _id(where, obj)
        e = obj.get("explanation")
        if not isinstance(e, str) or not e.strip():
            raise DataError(f"{where}: 'explanation' must be a non-empty string")
        yield where, fid, e, _windows(where, obj, need_values=False)


def read_explain(path: str | Path) -> Iterator[tuple[str, object, list]]:
    for where, obj in jsonl_objects(path):
        yield where, _id(where, obj), _windows(where, obj, need_values=True)


def simulate_file(path: str | Path, simulator) -> list[dict]:
    lines = list(read_simulate(path))  # validate every line before any work
    out = []
    for _, fid, expl, wins in lines:
        preds = simulator.simulate(expl, [t for t, _ in wins])
        row = {"id": fid, "r": None, "predictions": [[round(float(x), 4) for x in p] for p in preds]}
        if any(v is None for _, v in wins):
            row["reason"] = "no values given for some windows"
        else:
            p, t = np.concatenate(preds), np.concatenate([np.asarray(v, np.float64) for _, v in wins])
            row["r"] = pearson(p, t)
            if row["r"] is None:
                row["reason"] = why_undefined("pearson", p, t)
        out.append(row)
    return out


def split_windows(wins: list, threshold: float = 0.0) -> dict[str, list[int]]:
    """Window indices of the explain / select / test parts (see module doc)."""
    act = sorted([i for i, (_, v) in enumerate(wins) if max(v) > threshold], key=lambda i: -max(wins[i][1]))
    quiet = [i for i, (_, v) in enumerate(wins) if max(v) <= threshold]
    parts: dict[str, list[int]] = {"explain": [], "select": [], "test": []}
    for group, n_explain in ((act, N_ACTIVE), (quiet, N_QUIET)):
        for j, i in enumerate(group):  # explain, select, test in turn until explain has what it shows
            rest = j - 3 * n_explain
            part = ("explain", "select", "test")[j % 3] if rest < 0 else ("select", "test")[rest % 2]
            parts[part].append(i)
    return {k: sorted(v) for k, v in parts.items()}


def explain_one(fid, wins: list, explainer, simulator, k: int = 8, seed: int = 0, threshold: float = 0.0) -> dict:
    """One feature's best-of-k explanation and test score (see module doc); wins: [(tokens, values)]."""
    parts = split_windows(wins, threshold)
    pick = lambda part: [wins[i] for i in parts[part]]  # noqa: E731
    row: dict = {"id": fid, "explanation": None, "score": None, "candidates": [], "split": parts}
    if not any(max(v) > threshold for _, v in pick("explain")):
        row["reason"] = f"no window of this line has a value above {threshold}"
        return row
    cands = explainer.explain(pick("explain"), k=k, seed=seed)
    best, rs = select(selector_of(simulator), cands, pick("select") or pick("explain"))
    row["candidates"] = [{"text": c, "select_r": r} for c, r in zip(cands, rs)]
    if best is None:
        row["reason"] = "the explainer gave no usable explanation"
        return row
    row["explanation"] = cands[best]
    row["score"] = simulation_r(simulator, cands[best], pick("test"))
    if row["score"] is None:
        row["reason"] = ("no test windows (too few windows to split)" if not parts["test"] else
                         "r undefined on the test windows (constant values or predictions)")
    return row


def explain_file(path: str | Path, explainer, simulator, k: int = 8, seed: int = 0, threshold: float = 0.0) -> list[dict]:
    """Best-of-k explanation per line; `explainer.explain(windows, k, seed=...)` -> [str] (explainer.py)."""
    lines = list(read_explain(path))  # validate every line before any work
    return [explain_one(fid, wins, explainer, simulator, k, seed, threshold) for _, fid, wins in lines]
