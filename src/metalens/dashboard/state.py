"""What the dashboard holds while it runs: the sources, the results database path, the lazily loaded
subject and oracle, and the locks that keep two requests from hooking one model at once."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import DataError
from ..models import Subject, logit_lens
from ..results import ResultsDB
from .sources import Source


class State:
    def __init__(self, db_path: Path, sources: list[Source], subject_loader: Callable[[], Subject],
                 oracle_loader: Callable[[], object] | None = None):
        self.db_path, self.sources = Path(db_path), {s.key: s for s in sources}
        self.subject_loader, self.oracle_loader = subject_loader, oracle_loader
        self.model_lock = threading.Lock()  # one forward pass (or generation) on the subject at a time
        self.oracle_lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._subject: Subject | None = None
        self._oracle = None
        self._decode_cache: dict[int, str] = {}
        self.jobs: dict[str, threading.Event] = {}  # live generations: job id -> stop event

    # ---- lazily loaded models ----------------------------------------------------------------
    def subject(self) -> Subject:
        with self._load_lock:
            if self._subject is None:
                self._subject = self.subject_loader()
            return self._subject

    def oracle(self):
        if self.oracle_loader is None:
            raise DataError("no oracle is configured for this dashboard (start it without --no-oracle)")
        with self._load_lock:
            if self._oracle is None:
                self._oracle = self.oracle_loader()
            return self._oracle

    def decode(self, token_id: int) -> str:
        s = self._decode_cache.get(token_id)
        if s is None:
            s = self._decode_cache[token_id] = self.subject().tokenizer.decode([token_id])
        return s

    def lens(self, direction):
        s = self.subject()
        if direction.shape[-1] != s.d_model:
            return None
        return logit_lens(s, direction, 10)

    def db(self) -> ResultsDB:
        """A connection for this request (sqlite connections stay in the thread that opened them)."""
        return ResultsDB(self.db_path)

    def warm(self) -> threading.Thread:
        """Build missing SAE indexes and summaries in the background (pages asking meanwhile wait for them)."""

        def work():
            for src in self.sources.values():
                try:
                    src.summary()
                except Exception:  # noqa: BLE001 - the page that needs it shows the error
                    pass

        t = threading.Thread(target=work, daemon=True, name="dashboard-warm")
        t.start()
        return t

    # ---- features ----------------------------------------------------------------------------
    def source(self, key: str) -> Source:
        if key not in self.sources:
            raise DataError(f"no feature source {key!r}; this dashboard has {sorted(self.sources)}")
        return self.sources[key]

    def parse_ref(self, ref: str) -> tuple[Source, int]:
        """"sae0:12" -> (source, 12)."""
        key, _, i = ref.strip().rpartition(":")
        if not key or not i.lstrip("-").isdigit():
            raise DataError(f"feature {ref!r} is not of the form SOURCE:INDEX (e.g. sae0:12); sources: {sorted(self.sources)}")
        src = self.source(key)
        src.check(int(i))
        return src, int(i)

    def best_scores(self) -> dict[str, float]:
        """feature id -> best test simulation score of its (non-control) explanations."""
        db = self.db()
        try:
            rows = db.conn.execute(
                "SELECT e.feature, MAX(s.value) FROM explanations e JOIN scores s ON s.explanation_id = e.id "
                "WHERE s.metric = 'simulation' AND COALESCE(e.explainer, '') NOT LIKE 'control:%' "
                "GROUP BY e.feature").fetchall()
        finally:
            db.close()
        return {f: v for f, v in rows if v is not None}

    def feature_rows(self, key: str | None, sort: str, desc: bool, offset: int, limit: int) -> tuple[list[dict], int]:
        """A page of the feature index, sorted by density | max | score | layer | index."""
        scores = self.best_scores()
        parts = []
        for src in self.sources.values():
            if key and src.key != key:
                continue
            s = src.summary()
            n = src.n_features
            ids = [src.feature_id(i) for i in range(n)] if sort == "score" or n <= limit else None
            sc = np.array([scores.get(f, np.nan) for f in ids]) if ids is not None else np.full(n, np.nan)
            parts.append((src, s, sc))
        if not parts:
            return [], 0
        srcs = np.concatenate([np.full(src.n_features, k) for k, (src, _, _) in enumerate(parts)])
        idx = np.concatenate([np.arange(src.n_features) for src, _, _ in parts])
        col = {"density": np.concatenate([s.density for _, s, _ in parts]),
               "max": np.concatenate([s.max_act for _, s, _ in parts]),
               "score": np.concatenate([sc for _, _, sc in parts]),
               "layer": np.concatenate([np.full(src.n_features, src.layer) for src, _, _ in parts]),
               "index": idx.astype(float)}
        if sort not in col:
            raise DataError(f"sort {sort!r} is not one of {sorted(col)}")
        key_col = col[sort]
        filled = np.where(np.isnan(key_col), -np.inf if desc else np.inf, key_col)
        order = np.lexsort((idx, -filled if desc else filled))
        out = []
        for j in order[offset : offset + limit]:
            src, s, _ = parts[srcs[j]]
            i = int(idx[j])
            fid = src.feature_id(i)
            out.append(dict(source=src.key, index=i, id=fid, layer=src.layer, density=float(s.density[i]),
                            max=float(s.max_act[i]), score=scores.get(fid)))
        return out, len(order)
