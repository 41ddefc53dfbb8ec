"""An agent run on disk: append-only steps, resumable, rendered as Markdown or escaped HTML.

    run dir/run.json      what was asked (feature, config, the opening messages)
    run dir/steps.jsonl   one line per step, appended (and fsynced) as soon as the step ends:
                          {"step", "assistant": message, "results": [messages], "calls": [{"name", "args",
                           "result", "ok"}], "tokens_in", "tokens_out", "seconds", "time"}
    run dir/final.json    the answer, its evidence and its held-out score (written last, atomically)

A killed run leaves whole lines only (one write per line); on resume the steps are replayed into the
message history (no tool runs again) and the loop continues at the next step.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

from ..errors import DataError
from ..io import atomic_write_json, dumps, jsonl_objects

RUN, STEPS, FINAL = "run.json", "steps.jsonl", "final.json"


class Transcript:
    """The files of one run directory."""

    def __init__(self, run_dir: str | os.PathLike):
        self.dir = Path(run_dir)

    def start(self, header: dict) -> list[dict]:
        """Write run.json (or check that an existing one asks the same); return the recorded steps."""
        path = self.dir / RUN
        if path.exists():
            old = json.loads(path.read_text())
            keys = ("feature", "config")
            if any(old.get(k) != json.loads(dumps(header.get(k))) for k in keys):
                diff = [k for k in keys if old.get(k) != json.loads(dumps(header.get(k)))]
                raise DataError(f"{path} records another run ({', '.join(diff)} differ); give a new run directory")
            return self.steps()
        atomic_write_json(path, header)
        return []

    def header(self) -> dict:
        return json.loads((self.dir / RUN).read_text())

    def steps(self) -> list[dict]:
        path = self.dir / STEPS
        return [obj for _, obj in jsonl_objects(path)] if path.exists() else []

    def append(self, step: dict) -> None:
        """One line, one write, fsynced: a kill leaves either the whole line or none of it."""
        data = (dumps(step, indent=None) + "\n").encode()
        fd = os.open(self.dir / STEPS, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def finish(self, final: dict) -> None:
        atomic_write_json(self.dir / FINAL, final)

    def final(self) -> dict | None:
        path = self.dir / FINAL
        return json.loads(path.read_text()) if path.exists() else None


def replay(header: dict, steps: list[dict]) -> list[dict]:
    """The message history after the recorded steps: the opening messages, then each step's messages."""
    messages = list(header["messages"])
    for s in steps:
        messages.append(s["assistant"])
        messages += s["results"]
    return messages


def markdown(header: dict, steps: list[dict], final: dict | None) -> str:
    """A readable transcript: the task, each step's reply, tool calls and results, the final answer."""
    out = [f"# Agent run: {header['feature']}\n", f"LLM: `{header.get('llm', '?')}`\n"]
    for m in header["messages"]:
        out.append(f"**{m['role']}**\n\n```text\n{m['content']}\n```\n")
    for s in steps:
        out.append(f"## Step {s['step']}  ({s['tokens_in']}+{s['tokens_out']} tokens, {s['seconds']:.1f}s)\n")
        text = (s["assistant"].get("content") or "").strip()
        if text:
            out.append(f"```text\n{text}\n```\n")
        for c in s["calls"]:
            out.append(f"**{c['name']}** `{json.dumps(c['args'], ensure_ascii=False)}`\n")
            out.append(f"```text\n{c['result']}\n```\n")
    if final:
        out.append(f"## Final answer ({final.get('source', '')})\n\n> {final.get('explanation')}\n")
        out.append(f"Evidence: {final.get('evidence') or '-'}\n\nHeld-out simulation r: {final.get('score')}\n")
    return "\n".join(out)


def html_page(header: dict, steps: list[dict], final: dict | None) -> str:
    """The Markdown transcript as one static HTML page; every model or corpus text is escaped."""
    body = html.escape(markdown(header, steps, final))
    title = html.escape(f"agent run {header['feature']}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
            f"<body><pre style='white-space:pre-wrap'>{body}</pre></body></html>\n")


def write_views(run_dir: str | os.PathLike) -> dict[str, Path]:
    """transcript.md and transcript.html beside the run files."""
    from ..io import atomic_write_bytes

    t = Transcript(run_dir)
    h, steps, final = t.header(), t.steps(), t.final()
    paths = {"markdown": t.dir / "transcript.md", "html": t.dir / "transcript.html"}
    atomic_write_bytes(paths["markdown"], markdown(h, steps, final).encode())
    atomic_write_bytes(paths["html"], html_page(h, steps, final).encode())
    return paths
