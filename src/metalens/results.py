"""The results database: one SQLite file (WAL) recording runs and what they found.

    db = ResultsDB()                      # $METALENS_RESULTS or <cache>/results.sqlite
    with db.run("sae.train", config) as run:
        ...; run.outputs["weights"] = str(path)
    db.add_explanation(run.id, feature="resid.15/sae:12", text="months of the year", scores={...})

Each run keeps its config JSON, the code version, start/end time, status and output paths, so
every number in it can be traced back to the job that produced it. A run also records the pid and
host of its process: opening the database marks `running` runs whose process is gone (killed,
crashed, machine rebooted) as `interrupted`. Older databases gain these columns on open.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Iterator

from .errors import MetalensError
from .models import cache_dir


class ResultsError(MetalensError, RuntimeError):
    """A results database that cannot be opened or is not one."""


MIGRATIONS = (("pid", "INTEGER"), ("host", "TEXT"), ("boot", "TEXT"))


def boot_id() -> str:
    """This machine's boot id ('' where the OS has none): tells a pid of this boot from one of an earlier boot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else
    return True

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,            -- e.g. capture, sae.train, oracle.train, explain
    config TEXT NOT NULL,          -- JSON
    code_version TEXT NOT NULL,
    started REAL NOT NULL,
    ended REAL,
    status TEXT NOT NULL,          -- running | done | failed | interrupted
    outputs TEXT NOT NULL DEFAULT '{}',  -- JSON {name: path}
    pid INTEGER,                   -- process that ran it
    host TEXT,                     -- and its host name
    boot TEXT                      -- that host's boot id (a reboot ends every process)
);
CREATE TABLE IF NOT EXISTS explanations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER REFERENCES runs(id),
    feature TEXT NOT NULL,         -- feature id, e.g. "resid.15/sae-k32:1203" or "neurons.3:77"
    text TEXT NOT NULL,
    explainer TEXT,                -- model that wrote it
    prompt_version TEXT,
    seed INTEGER,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS scores (
    explanation_id INTEGER REFERENCES explanations(id),
    metric TEXT NOT NULL,          -- simulation | detection | fuzzing | ...
    split TEXT NOT NULL,           -- val | test
    value REAL,
    details TEXT                   -- JSON
);
CREATE TABLE IF NOT EXISTS oracle_answers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER REFERENCES runs(id),
    task TEXT,
    context TEXT NOT NULL,
    question TEXT NOT NULL,
    answer TEXT NOT NULL,
    expected TEXT,
    probs TEXT,                    -- JSON {choice: p}
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS agent_steps (
    run_id INTEGER REFERENCES runs(id),
    feature TEXT NOT NULL,
    step INTEGER NOT NULL,
    tool TEXT,                     -- the first tool called (NULL when the reply held no usable call)
    record TEXT NOT NULL,          -- JSON: the step as in the run's steps.jsonl (reply, calls, results, tokens, time)
    tokens INTEGER,
    seconds REAL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS monitor_tokens (
    run_id INTEGER REFERENCES runs(id),
    position INTEGER NOT NULL,     -- index in the full sequence (prompt + generated)
    token TEXT NOT NULL,
    readings TEXT NOT NULL,        -- JSON {reading name: value}
    flags TEXT NOT NULL            -- JSON [reading name]
);
CREATE INDEX IF NOT EXISTS explanations_feature ON explanations(feature);
CREATE INDEX IF NOT EXISTS scores_explanation ON scores(explanation_id);
"""


def code_version() -> str:
    from . import __version__

    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def default_db_path() -> Path:
    return Path(os.environ.get("METALENS_RESULTS", cache_dir() / "results.sqlite"))


def _json(obj: Any) -> str:
    if is_dataclass(obj):
        obj = asdict(obj)
    return json.dumps(obj, sort_keys=True, default=str)


@dataclass
class Run:
    id: int
    outputs: dict[str, str] = field(default_factory=dict)


class ResultsDB:
    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else default_db_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(self.path, timeout=30)
            self.conn.row_factory = sqlite3.Row
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.executescript(SCHEMA)
            have = {r[1] for r in self.conn.execute("PRAGMA table_info(runs)")}
            with self.conn:
                for col, typ in MIGRATIONS:
                    if col not in have:
                        self.conn.execute(f"ALTER TABLE runs ADD COLUMN {col} {typ}")
        except sqlite3.DatabaseError as e:
            raise ResultsError(f"{self.path} is not a usable results database ({e}); move it away or set "
                               "METALENS_RESULTS to another file") from None
        self.mark_interrupted()

    def close(self) -> None:
        self.conn.close()

    # ---- runs --------------------------------------------------------------------------------
    def mark_interrupted(self) -> list[int]:
        """Mark `running` runs of this host whose process is gone (or that began before this boot) as
        `interrupted`; returns their ids. Runs of other hosts, and of older versions (no pid), are left."""
        host, boot = socket.gethostname(), boot_id()
        rows = self.conn.execute("SELECT id, pid, boot FROM runs WHERE status='running' AND host=?", (host,)).fetchall()
        gone = [r["id"] for r in rows if r["pid"] is not None
                and ((boot and r["boot"] and r["boot"] != boot) or not process_alive(r["pid"]))]
        if gone:
            with self.conn:
                self.conn.executemany("UPDATE runs SET status='interrupted' WHERE id=? AND status='running'",
                                      [(i,) for i in gone])
        return gone

    def start_run(self, kind: str, config: Any) -> Run:
        with self.conn:
            cur = self.conn.execute(
                "INSERT INTO runs(kind, config, code_version, started, status, pid, host, boot) VALUES (?,?,?,?,?,?,?,?)",
                (kind, _json(config), code_version(), time.time(), "running", os.getpid(), socket.gethostname(),
                 boot_id()),
            )
        return Run(cur.lastrowid)

    def end_run(self, run: Run, status: str = "done") -> None:
        with self.conn:
            self.conn.execute(
                "UPDATE runs SET ended=?, status=?, outputs=? WHERE id=?",
                (time.time(), status, _json(run.outputs), run.id),
            )

    @contextmanager
    def run(self, kind: str, config: Any) -> Iterator[Run]:
        """A run that is marked done on exit, or failed if an exception escapes (Ctrl-C included); a run
        whose process is killed outright is marked interrupted when a database is next opened."""
        r = self.start_run(kind, config)
        try:
            yield r
        except BaseException:
            self.end_run(r, "failed")
            raise
        self.end_run(r, "done")

    def runs(self, kind: str | None = None) -> list[dict]:
        q, args = "SELECT * FROM runs", ()
        if kind is not None:
            q, args = q + " WHERE kind=?", (kind,)
        rows = self.conn.execute(q + " ORDER BY id", args).fetchall()
        return [dict(r) | {"config": json.loads(r["config"]), "outputs": json.loads(r["outputs"])} for r in rows]

    # ---- findings ----------------------------------------------------------------------------
    def add_explanation(
        self,
        run_id: int | None,
        feature: str,
        text: str,
        explainer: str | None = None,
        prompt_version: str | None = None,
        seed: int | None = None,
        scores: list[tuple[str, str, float, Any]] | None = None,
    ) -> int:
        """Record an explanation and its scores: [(metric, split, value, details), ...]."""
        with self.conn:
            cur = self.conn.execute(
                "INSERT INTO explanations(run_id, feature, text, explainer, prompt_version, seed, created) "
                "VALUES (?,?,?,?,?,?,?)",
                (run_id, feature, text, explainer, prompt_version, seed, time.time()),
            )
            eid = cur.lastrowid
            for metric, split, value, details in scores or []:
                self.conn.execute(
                    "INSERT INTO scores VALUES (?,?,?,?,?)", (eid, metric, split, value, _json(details))
                )
        return eid

    def add_score(self, explanation_id: int, metric: str, split: str, value: float, details: Any = None) -> None:
        with self.conn:
            self.conn.execute(
                "INSERT INTO scores VALUES (?,?,?,?,?)", (explanation_id, metric, split, value, _json(details))
            )

    def explanations(self, feature: str | None = None) -> list[dict]:
        q, args = "SELECT * FROM explanations", ()
        if feature is not None:
            q, args = q + " WHERE feature=?", (feature,)
        out = []
        for r in self.conn.execute(q + " ORDER BY id", args).fetchall():
            scores = self.conn.execute(
                "SELECT metric, split, value FROM scores WHERE explanation_id=?", (r["id"],)
            ).fetchall()
            out.append(dict(r) | {"scores": [dict(s) for s in scores]})
        return out

    def forget_explanations(self, feature: str, run_ids: list[int], control: bool) -> int:
        """Delete a feature's explanations (candidates, or controls if `control`) written by these runs,
        with their scores: how a resumed job drops what an interrupted attempt half-recorded."""
        if not run_ids:
            return 0
        marks = ",".join("?" * len(run_ids))
        op = "LIKE" if control else "NOT LIKE"
        with self.conn:
            ids = [r[0] for r in self.conn.execute(
                f"SELECT id FROM explanations WHERE feature=? AND run_id IN ({marks}) "
                f"AND COALESCE(explainer, '') {op} 'control:%'", (feature, *run_ids))]
            self.conn.executemany("DELETE FROM scores WHERE explanation_id=?", [(i,) for i in ids])
            self.conn.executemany("DELETE FROM explanations WHERE id=?", [(i,) for i in ids])
        return len(ids)

    def add_oracle_answer(
        self,
        run_id: int | None,
        context: str,
        question: str,
        answer: str,
        probs: dict[str, float] | None = None,
        expected: str | None = None,
        task: str | None = None,
    ) -> int:
        with self.conn:
            cur = self.conn.execute(
                "INSERT INTO oracle_answers(run_id, task, context, question, answer, expected, probs, created) "
                "VALUES (?,?,?,?,?,?,?,?)",
                (run_id, task, context, question, answer, expected, _json(probs), time.time()),
            )
        return cur.lastrowid

    def add_agent_step(self, run_id: int | None, feature: str, step: int, record: dict) -> None:
        """One agent step (agent/transcript.py): the reply, its tool calls and results, tokens and time."""
        tool = next((c["name"] for c in record.get("calls", []) if c.get("name")), None)
        with self.conn:
            self.conn.execute(
                "INSERT INTO agent_steps VALUES (?,?,?,?,?,?,?,?)",
                (run_id, feature, step, tool, _json(record), record.get("tokens_in", 0) + record.get("tokens_out", 0),
                 record.get("seconds"), time.time()),
            )

    def agent_steps(self, run_id: int | None = None) -> list[dict]:
        q, args = "SELECT * FROM agent_steps", ()
        if run_id is not None:
            q, args = q + " WHERE run_id=?", (run_id,)
        return [dict(r) | {"record": json.loads(r["record"])} for r in self.conn.execute(q + " ORDER BY rowid", args)]

    def oracle_answers(self, run_id: int | None = None) -> list[dict]:
        q, args = "SELECT * FROM oracle_answers", ()
        if run_id is not None:
            q, args = q + " WHERE run_id=?", (run_id,)
        return [dict(r) | {"probs": json.loads(r["probs"])} for r in self.conn.execute(q + " ORDER BY id", args)]

    def add_monitor_tokens(self, run_id: int | None, rows: list[tuple[int, str, dict, list]]) -> None:
        """Record a monitored generation: (position, token, readings, flags) per token."""
        with self.conn:
            self.conn.executemany("INSERT INTO monitor_tokens VALUES (?,?,?,?,?)",
                                  [(run_id, p, t, _json(r), _json(f)) for p, t, r, f in rows])

    def monitor_tokens(self, run_id: int) -> list[dict]:
        rows = self.conn.execute("SELECT * FROM monitor_tokens WHERE run_id=? ORDER BY position", (run_id,))
        return [dict(r) | {"readings": json.loads(r["readings"]), "flags": json.loads(r["flags"])} for r in rows]
