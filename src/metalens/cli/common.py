"""What every command shares: the common options, loading the subject, reading texts, output,
error handling and run recording — written once, here.

A command is a plain function registered with `@command(app)`. It returns an `Output` (the JSON
object, a human rendering, output paths); the wrapper records the run in the results database,
prints JSON for `--json` or the human view otherwise, and turns an expected mistake (any
`MetalensError`) into one line on stderr and exit status 2 (the traceback with `--debug` or
METALENS_DEBUG=1).
"""

from __future__ import annotations

import contextvars
import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import typer
from rich.console import Console

from ..errors import MetalensError

console = Console(stderr=True)

ModelOpt = typer.Option(None, "--model", "-m", help="local HF model dir; default: SmolLM2-135M-Instruct")
DeviceOpt = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N")
JsonOpt = typer.Option(False, "--json", help="print machine-readable JSON on stdout")
ColumnOpt = typer.Option("text", "--column", help="field / column holding the text (.jsonl and datasets)")

_run: contextvars.ContextVar = contextvars.ContextVar("metalens_run", default=None)
DEBUG = {"on": bool(os.environ.get("METALENS_DEBUG"))}


class Output(NamedTuple):
    """What a command produced."""

    data: Any
    """the JSON-able result (printed with --json)"""
    human: Callable[[], None] | None = None
    """prints the human view; None prints `data` as pretty JSON"""
    outputs: dict[str, str] | None = None
    """name -> path of files written, recorded with the run"""


def current_run():
    """The results-database run of the command being executed (None outside a recorded command)."""
    return _run.get()


def emit(obj, as_json: bool, human: Callable[[], None] | None = None) -> None:
    """Strict JSON on stdout for --json (NaN -> null), otherwise the human rendering (or pretty JSON)."""
    from ..io import dumps

    if as_json:
        sys.stdout.write(dumps(obj) + "\n")
    elif human is not None:
        human()
    else:
        console.print_json(dumps(obj))


def fail(message: str, code: int = 2):
    """Print one error line and exit (status 2: a usage or input mistake)."""
    from rich.markup import escape

    # one line, never wrapped (a path broken in two cannot be copied); the message is text, not markup
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


def command(app: typer.Typer, name: str | None = None, record: bool = True, kind: str | None = None):
    """Register `fn` on `app`; its run is recorded (kind = `kind` or the command name) and its Output emitted."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(**kwargs):
            as_json = bool(kwargs.get("as_json", False))
            run_kind = kind or name or fn.__name__.removesuffix("_cmd")
            try:
                if record:
                    from ..results import ResultsDB

                    db = ResultsDB()
                    with db.run(run_kind, {k: _plain(v) for k, v in kwargs.items()}) as run:
                        token = _run.set(run)
                        try:
                            out = fn(**kwargs)
                        finally:
                            _run.reset(token)
                        if out is not None and out.outputs:
                            run.outputs.update({k: str(v) for k, v in out.outputs.items()})
                    db.close()
                else:
                    out = fn(**kwargs)
            except MetalensError as e:
                if DEBUG["on"]:
                    raise
                fail(str(e))
            except OSError as e:  # a path that cannot be written or read: permissions, a full disk, a directory
                if DEBUG["on"]:
                    raise
                fail(f"{e.strerror or e}{f': {e.filename}' if e.filename else ''} (rerun with --debug for the traceback)")
            except KeyboardInterrupt:
                console.print("[yellow]interrupted[/]: finished work is saved; rerun the same command to resume")
                raise typer.Exit(130)
            if out is not None:
                emit(out.data, as_json, out.human)

        app.command(name)(wrapper)
        return fn

    return deco


def _plain(v):
    return str(v) if isinstance(v, Path) else v


def load_model(model: Optional[str], device: str):
    """Load the subject for a command, with a spinner."""
    from ..models import load_subject

    with console.status(f"loading {model or 'SmolLM2-135M-Instruct'}"):
        return load_subject(model, device=device)


def read_texts(path: Path, column: str = "text", limit: int | None = None, keep_blank: bool = False) -> list[str]:
    """Texts for a command (.txt, .jsonl, parquet/arrow/json/csv, a saved HF dataset); no text is an error.

    keep_blank keeps blank lines as empty texts (text i = line i + 1; capture skips them)."""
    from ..errors import DataError
    from ..io import read_texts as read

    texts = read(path, column, limit, keep_blank)
    if not any(texts):
        raise DataError(f"texts {str(path)!r} hold no text: give a file with at least one non-blank line")
    return texts


def parse_indices(spec: str, what: str = "indices") -> list[int]:
    """'0-31' / '3,17,40' / '0-3,9' -> a list of ints (ranges inclusive); a clear error otherwise."""
    out: list[int] = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        lo, dash, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi) if dash else int(lo)
        except ValueError:
            raise typer.BadParameter(f"{what} {part!r}: expected N or FIRST-LAST, e.g. 0-31 or 3,17,40") from None
        if a < 0 or b < a:
            raise typer.BadParameter(f"{what} {part!r}: expected 0 <= FIRST <= LAST")
        out += range(a, b + 1)
    if not out:
        raise typer.BadParameter(f"{what}: none given in {spec!r}")
    return out


def at_least(name: str, value, low, high=None):
    """Raise BadParameter unless low <= value (<= high) and finite (numeric options: steps, batch sizes...)."""
    import math

    if value is None or not value >= low or (high is not None and not value <= high) or not math.isfinite(value):
        accepted = f"in {low}..{high}" if high is not None else f">= {low}"
        raise typer.BadParameter(f"{name} must be {accepted}, got {value}", param_hint=name)
    return value


def finite(name: str, value: float) -> float:
    """Raise BadParameter unless value is a finite number (scales, multipliers)."""
    import math

    if not math.isfinite(value):
        raise typer.BadParameter(f"{name} must be a finite number, got {value}", param_hint=name)
    return value
