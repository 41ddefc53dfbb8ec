"""Files: atomic writes, JSON that is always valid JSON, JSONL rows with `file:line` errors, corpora.

Every file metalens writes goes through `atomic_write_bytes` (temp file + fsync + rename), so a run
killed at any point leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

from .errors import DataError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically, with the user's normal file permissions (0666 & ~umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def finite(obj):
    """A copy of a JSON-able object with every NaN/inf float replaced by None (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def dumps(obj, indent: int | None = 2) -> str:
    """Strict JSON text (non-finite floats become null; dataclasses/NamedTuples/Paths as plain data)."""
    return json.dumps(finite(plain(obj)), indent=indent, ensure_ascii=False, allow_nan=False)


def plain(obj):
    """Dataclasses, NamedTuples, Paths and numpy scalars as plain JSON-able Python values."""
    from dataclasses import asdict, is_dataclass

    if is_dataclass(obj) and not isinstance(obj, type):
        return plain(asdict(obj))
    if isinstance(obj, tuple) and hasattr(obj, "_asdict"):
        return plain(obj._asdict())
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return obj.item()  # numpy / torch scalar
    return obj


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_bytes(path, (dumps(obj) + "\n").encode())


def texts_hash(texts: Sequence[str]) -> str:
    """Short content hash of an ordered list of texts (order matters)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def file_hash(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_lines(path: str | os.PathLike) -> list[str]:
    """The lines of a UTF-8 text file; a missing or non-UTF-8 file is a DataError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file {str(path)!r} does not exist (or is not a file)")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start}); "
                        "convert the file to UTF-8") from None


def jsonl_rows(path: str | os.PathLike) -> Iterator[tuple[str, object]]:
    """("path:line", parsed object) per non-blank line; a line that is not JSON is a DataError."""
    path = Path(path)
    for i, line in enumerate(read_lines(path), 1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{i}", json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{i}: not valid JSON ({e})") from None


def jsonl_objects(path: str | os.PathLike) -> Iterator[tuple[str, dict]]:
    """Like `jsonl_rows`, but every row must be a JSON object."""
    for where, obj in jsonl_rows(path):
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        yield where, obj


def write_jsonl(path: str | os.PathLike, rows: Sequence) -> Path:
    """Atomically write one strict-JSON line per row."""
    path = Path(path)
    atomic_write_bytes(path, "".join(dumps(r, indent=None) + "\n" for r in rows).encode())
    return path
