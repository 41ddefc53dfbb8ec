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
    """The lines of a UTF-8 text file (split on newlines only; a BOM and CRLF endings are dropped);
    a missing or non-UTF-8 file is a DataError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file {str(path)!r} does not exist (or is not a file)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start}); "
                        "convert the file to UTF-8") from None
    # split on "\n" only (not str.splitlines, which also splits on \x0b, \x1c, U+2028...): line i is text i
    lines = text.removeprefix("\ufeff").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


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
        except RecursionError:
            raise DataError(f"{path}:{i}: JSON nested too deeply") from None


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


# ---- corpora: where texts come from ------------------------------------------------------------
DATASET_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow", ".json": "json", ".csv": "csv"}


def read_texts(path: str | os.PathLike, column: str = "text", limit: int | None = None,
               keep_blank: bool = False) -> list[str]:
    """Texts from a file or a local Hugging Face dataset, in order.

    - `.txt`: one text per non-blank line;
    - `.jsonl`: one JSON object per line, the text in `column`;
    - `.parquet` / `.arrow` / `.json` / `.csv`, or a directory saved with `Dataset.save_to_disk` or holding such
      files: read with `datasets`, streamed (only the first `limit` rows are read), the text in `column`.

    keep_blank: a blank line of a .txt or .jsonl file (and a blank text) becomes an empty text "" instead of
    being dropped, so text i is line i + 1 of the file (`limit` then counts lines). Capture skips empty
    texts, so a store's `text_idx` + 1 is the source line.
    """
    return list(iter_texts(path, column, limit, keep_blank))


def iter_texts(path: str | os.PathLike, column: str = "text", limit: int | None = None,
               keep_blank: bool = False) -> Iterator[str]:
    """Like `read_texts`, one text at a time (large datasets are streamed, never loaded whole)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"texts {str(path)!r} do not exist: give a .txt, .jsonl, parquet/arrow/json/csv file or "
                        "a local Hugging Face dataset directory")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise DataError(f"limit must be an integer >= 0 (or None: all), got {limit!r}")
    n = 0
    for text in _texts_of(path, column, keep_blank):
        if limit is not None and n >= limit:
            return
        n += 1
        yield text


def _texts_of(path: Path, column: str, keep_blank: bool) -> Iterator[str]:
    if path.is_file() and path.suffix == ".jsonl":
        line = 0
        for where, obj in jsonl_objects(path):
            at = int(where.rpartition(":")[2])
            if keep_blank:
                yield from [""] * (at - line - 1)  # blank lines keep their place
            line = at
            if not isinstance(obj.get(column), str):
                raise DataError(f"{where}: expected a string in field {column!r}, got "
                                f"{type(obj.get(column)).__name__} (pick the field with --column)")
            if obj[column].strip() or keep_blank:
                yield obj[column] if obj[column].strip() else ""
        return
    if path.is_file() and path.suffix not in DATASET_SUFFIXES:
        for line in read_lines(path):
            if line.strip() or keep_blank:
                yield line if line.strip() else ""
        return
    if path.is_dir() or path.suffix in DATASET_SUFFIXES:
        for text in _dataset_texts(path, column):
            if text.strip() or keep_blank:
                yield text if text.strip() else ""
        return
    raise DataError(f"texts {str(path)!r} are neither a file nor a directory")


def _dataset_texts(path: Path, column: str) -> Iterator[str]:
    try:
        import datasets
    except ImportError:  # pragma: no cover - a pinned dependency
        raise DataError("reading a Hugging Face dataset needs the `datasets` package: pip install datasets") from None
    datasets.disable_progress_bars()
    if path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists()):
        ds = datasets.load_from_disk(str(path))  # memory-mapped, not read whole
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
        rows = ds
    else:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in DATASET_SUFFIXES)
        if not files:
            raise DataError(f"{str(path)!r} holds no dataset: expected save_to_disk output or "
                            f"{'/'.join(DATASET_SUFFIXES)} files")
        kinds = {DATASET_SUFFIXES[p.suffix] for p in files}
        if len(kinds) > 1:
            raise DataError(f"{str(path)!r} mixes dataset formats {sorted(kinds)}; point at one kind of file")
        try:
            rows = datasets.load_dataset(kinds.pop(), data_files=[str(p) for p in files], split="train", streaming=True)
        except Exception as e:  # datasets raises many types for unreadable files
            raise DataError(f"cannot read dataset {str(path)!r}: {e}") from None
    names = list(getattr(rows, "column_names", None) or [])
    if names and column not in names:
        raise DataError(f"dataset {str(path)!r} has no column {column!r}; its columns: {names} (choose with --column)")
    for i, row in enumerate(rows):
        text = row.get(column)
        if not isinstance(text, str):
            raise DataError(f"{path} row {i}: column {column!r} is {type(text).__name__}, not a string")
        yield text


def pydoc_texts(chunk_chars: int = 400, min_chars: int = 80) -> list[str]:
    """Offline English text when no corpus is given: CPython's bundled documentation topics
    (`pydoc_data.topics`, ~465k characters) cut into paragraph-aligned chunks, in a fixed order."""
    import re

    from pydoc_data.topics import topics

    chunks: list[str] = []
    for key in sorted(topics):
        paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", topics[key])]
        buf = ""
        for p in paras:
            if set(p) <= set("*=-~^ "):  # rst underlines
                continue
            if buf and len(buf) + len(p) > chunk_chars:
                chunks.append(buf)
                buf = ""
            buf = f"{buf} {p}".strip()
        if buf:
            chunks.append(buf)
    return [c[: 2 * chunk_chars] for c in chunks if len(c) >= min_chars]
