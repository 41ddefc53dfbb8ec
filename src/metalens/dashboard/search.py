"""Search: explanations by text (SQL over the results database) and features by the token they fire on."""

from __future__ import annotations

import re

import numpy as np
import torch

from .sources import DenseSource, SaeSource, Source
from .state import State


def resolve(state: State, fid: str) -> tuple[Source, int] | None:
    """A feature id as recorded in the database (e.g. "resid.2/sae-topk-k8-w256:12") -> (source, index)."""
    stem, _, last = fid.rpartition(":")
    for src in state.sources.values():
        if isinstance(src, DenseSource) and src.weight is not None:
            if fid in [src.feature_id(i) for i in range(src.n_features)]:
                return src, [src.feature_id(i) for i in range(src.n_features)].index(fid)
        elif last.isdigit() and src.feature_id(0).rpartition(":")[0] == stem and int(last) < src.n_features:
            return src, int(last)
    return None


def by_text(state: State, q: str, limit: int = 50) -> list[dict]:
    """Explanations containing the query's words, ranked by words matched, whole phrase, then best score."""
    words = [w for w in re.findall(r"\w+", q.lower()) if w]
    if not words:
        return []
    db = state.db()
    try:
        where = " OR ".join("LOWER(e.text) LIKE ?" for _ in words)
        rows = db.conn.execute(
            "SELECT e.id, e.feature, e.text, e.explainer, (SELECT MAX(value) FROM scores s WHERE s.explanation_id = e.id "
            f"AND s.metric = 'simulation') AS score FROM explanations e WHERE ({where}) "
            "AND COALESCE(e.explainer, '') NOT LIKE 'control:%'", [f"%{w}%" for w in words]).fetchall()
    finally:
        db.close()
    out = []
    for r in rows:
        text = r["text"].lower()
        hits = sum(w in text for w in words)
        out.append(dict(feature=r["feature"], text=r["text"], explainer=r["explainer"], score=r["score"], hits=hits,
                        phrase=q.lower().strip() in text, link=resolve(state, r["feature"])))
    out.sort(key=lambda d: (-d["hits"], -d["phrase"], -(d["score"] if d["score"] is not None else -1e9)))
    return out[:limit]


def token_rows(src: Source, seq: list[int], limit: int = 2000) -> np.ndarray:
    """Rows of the store whose token (and the ones before it, in the same text) spell `seq`."""
    tok, text = src.tokens.token_ids, src.tokens.text_idx
    mask = tok == seq[-1]
    for back in range(1, len(seq)):
        shifted = np.zeros_like(mask)
        shifted[back:] = (tok[:-back] == seq[-1 - back]) & (text[:-back] == text[back:])
        mask &= shifted
    return np.nonzero(mask)[0][:limit]


def by_token(state: State, q: str, limit: int = 30) -> tuple[list[dict], list[str]]:
    """Features ranked by their mean value on the store's tokens matching `q` (zero where silent).

    Returns (rows, the query's tokens). A query in quotes keeps its spaces: "' Paris'" is " Paris"."""
    q = q[1:-1] if len(q) >= 2 and q[0] == q[-1] and q[0] in "'\"" else q
    tokenizer = state.subject().tokenizer
    seq = tokenizer(q, add_special_tokens=False)["input_ids"]
    if not seq:
        return [], []
    out = []
    for src in state.sources.values():
        rows = token_rows(src, seq)
        if not len(rows):
            continue
        if isinstance(src, SaeSource):
            lat, val = src.latents_on_rows(rows)
            mass = np.bincount(lat, weights=val, minlength=src.n_features)
            fires = np.bincount(lat, minlength=src.n_features)
        else:
            mass, fires = np.zeros(src.n_features), np.zeros(src.n_features)
            want = set(rows.tolist())
            start = 0
            for acts in src.shards():
                local = [r - start for r in range(start, start + len(acts)) if r in want]
                if local:
                    y = src.apply(acts[torch.tensor(local)]).double().numpy()  # [m, n_features]
                    mass += y.sum(0)
                    fires += (y > 0).sum(0)
                start += len(acts)
        mean = mass / len(rows)
        density = src.summary().density
        for i in np.argsort(-mean)[:limit]:
            if mean[i] <= 0:
                break
            out.append(dict(source=src.key, index=int(i), id=src.feature_id(int(i)), mean=float(mean[i]),
                            frac=float(fires[i]) / len(rows), n=len(rows), density=float(density[i])))
    out.sort(key=lambda d: -d["mean"])
    return out[:limit], [tokenizer.decode([t]) for t in seq]
