"""ActivationStore: activations on disk as safetensors shards plus one manifest.json.

    out/manifest.json            what, from which model, how many rows, the shard list
    out/shard_00000.safetensors  per site [rows, d] (fp32/bf16/fp16), token_ids/text_idx/positions [rows],
                                 "<site>.sum" [d] float64 (running mean without a second pass)

Every write is atomic (temp file + rename), shard first, then the manifest that names it, so a
capture killed at any point resumes at the first text not in the manifest, losing and
duplicating nothing.

Reads check every shard's size always, and its sha256 once: a verified shard is recorded in
out/verified.json (keyed by the manifest's hash, the file's size and mtime; written atomically), so
later reads memory-map it without hashing. Activations that are not finite are refused on read,
naming the shard, row, text and position. A bad shard that a plain rerun cannot fix is repaired by
`capture_to_store(..., repair=True)` (`metalens capture --repair`): it drops the first bad shard and
every one after it from the manifest and captures those texts again.

Row `text_idx` is the index of the text in the list given to capture; texts read with
`metalens.io.read_texts(..., keep_blank=True)` (as `metalens capture` does) keep blank lines as empty
texts, which capture skips, so text_idx + 1 is the text's line in a .txt or .jsonl file.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save
from tqdm.auto import tqdm

from .capture import Activations, Positions, capture, check_capture_args
from .errors import DataError, MetalensError
from .io import atomic_write_bytes, atomic_write_json, file_hash, texts_hash
from .models import Subject

MANIFEST = "manifest.json"
VERIFIED = "verified.json"
RACY_NS = 2_000_000_000  # a shard modified less than 2 s ago is not cached as verified (mtime granularity)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
INDEX_KEYS = ("token_ids", "text_idx", "positions")


class StoreError(MetalensError, RuntimeError):
    """A store that is missing, corrupt, or does not hold what was asked."""


@dataclass
class Manifest:
    model: str
    """model name"""
    model_fingerprint: str
    """hash of a sample of the weights (Subject.fingerprint)"""
    sites: list[str]
    """sites stored, e.g. ["resid.15"]"""
    widths: dict[str, int]
    """width of each site"""
    dtype: str
    """storage dtype: float32 | bfloat16 | float16"""
    source: str
    """where the texts came from (a path or a description)"""
    texts_sha256: str
    """hash of all the texts, so a resume cannot silently mix two sources"""
    n_texts: int
    """number of texts in the source"""
    max_length: int | None
    """tokens per text after truncation"""
    positions: str
    """which token positions were kept"""
    n_rows: int = 0
    """rows written so far"""
    texts_done: int = 0
    """texts [0, texts_done) are in the shards"""
    shards: list[dict] = field(default_factory=list)
    """{file, rows, texts: [start, end], bytes, sha256, norm_sum: {site: float}}"""
    stats: dict[str, dict] = field(default_factory=dict)
    """per site: {"mean_norm": mean L2 norm of a row} (the mean vector: ActivationStore.mean)"""
    created: float = field(default_factory=time.time)
    """unix time"""

    @property
    def complete(self) -> bool:
        return self.texts_done >= self.n_texts


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _manifest_problem(obj) -> str | None:
    """Why a parsed manifest.json cannot be a Manifest (None when it can)."""
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    names = set(Manifest.__dataclass_fields__)
    required = {n for n, f in Manifest.__dataclass_fields__.items() if f.default is f.default_factory is MISSING}
    if required - set(obj):
        return f"missing fields {sorted(required - set(obj))}"
    if set(obj) - names:
        return f"unknown fields {sorted(set(obj) - names)}"
    checks = {
        "model": lambda v: isinstance(v, str),
        "model_fingerprint": lambda v: isinstance(v, str),
        "sites": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
        "widths": lambda v: isinstance(v, dict) and all(_is_int(x) and x > 0 for x in v.values()),
        "dtype": lambda v: isinstance(v, str) and v in DTYPES,
        "source": lambda v: isinstance(v, str),
        "texts_sha256": lambda v: isinstance(v, str),
        "n_texts": lambda v: _is_int(v) and v >= 0,
        "max_length": lambda v: v is None or (_is_int(v) and v > 0),
        "positions": lambda v: isinstance(v, str),
        "n_rows": lambda v: _is_int(v) and v >= 0,
        "texts_done": lambda v: _is_int(v) and v >= 0,
        "shards": lambda v: isinstance(v, list),
        "stats": lambda v: isinstance(v, dict),
        "created": _is_num,
    }
    for key, ok in checks.items():
        if key in obj and not ok(obj[key]):
            return f"field {key!r} has a wrong value {str(obj[key])[:80]!r} ({type(obj[key]).__name__})"
    if set(obj["widths"]) != set(obj["sites"]):
        return f"'widths' names {sorted(obj['widths'])} but 'sites' is {obj['sites']}"
    rows = end = 0
    for j, e in enumerate(obj.get("shards", [])):
        if not (isinstance(e, dict) and isinstance(e.get("file"), str) and e["file"] == Path(e["file"]).name
                and e["file"] not in ("", ".", "..") and _is_int(e.get("rows")) and e["rows"] >= 0
                and _is_int(e.get("bytes")) and isinstance(e.get("sha256"), str)
                and isinstance(e.get("texts"), list) and len(e["texts"]) == 2 and all(map(_is_int, e["texts"]))
                and isinstance(e.get("norm_sum"), dict) and all(_is_num(e["norm_sum"].get(x)) for x in obj["sites"])):
            return (f"shard entry {j} is malformed (expected {{file: a plain file name, rows: int, texts: [start, end], "
                    f"bytes: int, sha256: str, norm_sum: {{site: number}}}}), got {str(e)[:120]!r}")
        if e["texts"][0] != end or e["texts"][1] < end:
            return f"shard entry {j} covers texts {e['texts']}, but the previous shard ended at text {end}"
        rows, end = rows + e["rows"], e["texts"][1]
    if rows != obj.get("n_rows", 0) or end != obj.get("texts_done", 0):
        return (f"the shards hold {rows} rows and texts [0, {end}) but the manifest says n_rows={obj.get('n_rows', 0)}, "
                f"texts_done={obj.get('texts_done', 0)}")
    return None


REPAIR_HINT = ("recapture it: rerun the same `metalens capture` with --repair (or capture_to_store(..., repair=True)), "
               "which drops this shard and every later one from the manifest and captures their texts again")


class ActivationStore:
    """A directory of activation shards. Open an existing one with ActivationStore(path)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not mpath.is_file():
            raise StoreError(f"{str(self.path)!r} is not an activation store: no {MANIFEST} in it")
        try:
            obj = json.loads(mpath.read_bytes().decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise StoreError(f"{mpath} is not a valid manifest (not JSON: {e}); recapture the store") from None
        problem = _manifest_problem(obj)
        if problem:
            raise StoreError(f"{mpath} is not a valid manifest: {problem}; recapture the store")
        self.manifest = Manifest(**obj)
        self._verified: dict[str, list] | None = None  # file -> [sha256, size, mtime_ns] of shards hashed OK
        self._verified_dirty = 0.0  # time of the first unsaved verification (0: none)

    # ---- writing -----------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, manifest: Manifest) -> "ActivationStore":
        path = Path(path)
        if (path / MANIFEST).exists():
            raise StoreError(f"{str(path)!r} already holds a store; open it, or choose another directory")
        if manifest.dtype not in DTYPES:
            raise StoreError(f"dtype {manifest.dtype!r} is not one of {sorted(DTYPES)}")
        atomic_write_json(path / MANIFEST, asdict(manifest))
        return cls(path)

    def append(self, acts: Activations, texts_end: int) -> None:
        """Write one shard holding texts [texts_done, texts_end), then record it in the manifest."""
        m = self.manifest
        dtype = DTYPES[m.dtype]
        tensors: dict[str, torch.Tensor] = {}
        norm_sum = {}
        for site in m.sites:
            a = acts[site].float()  # [rows, d]
            if not torch.isfinite(a).all():
                bad = (~torch.isfinite(a)).any(1).nonzero()[0, 0].item()
                raise StoreError(
                    f"non-finite activations at site {site}, text {acts.text_idx[bad].item()}, "
                    f"position {acts.positions[bad].item()}: refusing to store NaN/inf"
                )
            tensors[site] = a.to(dtype).contiguous()
            tensors[f"{site}.sum"] = a.double().sum(0)  # [d]
            norm_sum[site] = a.norm(dim=1).sum().item()
        for key in INDEX_KEYS:
            tensors[key] = getattr(acts, key).long().contiguous()
        data = st_save(tensors, metadata={"model": m.model, "texts": f"{m.texts_done}:{texts_end}"})
        name = f"shard_{len(m.shards):05d}.safetensors"
        atomic_write_bytes(self.path / name, data)
        sha = hashlib.sha256(data).hexdigest()
        m.shards.append(
            dict(
                file=name,
                rows=len(acts),
                texts=[m.texts_done, texts_end],
                bytes=len(data),
                sha256=sha,
                norm_sum=norm_sum,
            )
        )
        m.n_rows += len(acts)
        m.texts_done = texts_end
        m.stats = {site: {"mean_norm": self.mean_norm(site)} for site in m.sites}
        atomic_write_json(self.path / MANIFEST, asdict(m))
        self._save_verified()

    def truncate(self, n_shards: int) -> list[str]:
        """Drop shards [n_shards, ...) from the manifest (then delete their files); returns the files dropped."""
        m = self.manifest
        dropped = [e["file"] for e in m.shards[n_shards:]]
        m.shards = m.shards[:n_shards]
        m.n_rows = sum(e["rows"] for e in m.shards)
        m.texts_done = m.shards[-1]["texts"][1] if m.shards else 0
        m.stats = {site: {"mean_norm": self.mean_norm(site)} for site in m.sites}
        atomic_write_json(self.path / MANIFEST, asdict(m))  # the manifest first: a kill now leaves stray files only
        for name in dropped:
            (self.path / name).unlink(missing_ok=True)
            self._verified_cache().pop(name, None)
        self._verified_dirty = self._verified_dirty or time.time()
        self._save_verified(force=True)
        return dropped

    def first_bad_shard(self, full: bool = True) -> tuple[int, str] | None:
        """(index, reason) of the first shard that is missing, truncated or (if `full`) fails its hash; else None."""
        for i in range(len(self.manifest.shards)):
            try:
                self.check_shard(i) if full else self._shard_file(i)
            except StoreError as e:
                return i, str(e).split("; ")[0]
        self._save_verified(force=True)
        return None

    # ---- reading -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.manifest.n_rows

    @property
    def sites(self) -> list[str]:
        return self.manifest.sites

    def _check_site(self, site: str) -> None:
        if site not in self.manifest.sites:
            raise StoreError(f"site {site!r} is not in store {str(self.path)!r}; it holds {self.manifest.sites}")

    # ---- verification: size always, sha256 once (cached in verified.json) ---------------------
    def _verified_cache(self) -> dict[str, list]:
        if self._verified is None:
            self._verified = {}
            try:
                obj = json.loads((self.path / VERIFIED).read_text())
                if isinstance(obj, dict) and isinstance(obj.get("shards"), dict):
                    self._verified = {k: v for k, v in obj["shards"].items() if isinstance(v, list)}
            except (OSError, ValueError):
                pass  # no cache (or an unreadable one): shards are hashed again
        return self._verified

    def _save_verified(self, force: bool = False) -> None:
        if self._verified_dirty and (force or time.time() - self._verified_dirty > 5):
            try:
                atomic_write_json(self.path / VERIFIED, {"shards": self._verified})
            except OSError:
                pass  # a read-only store: verified again next time
            self._verified_dirty = 0.0

    def _shard_file(self, i: int) -> tuple[Path, os.stat_result]:
        entry = self.manifest.shards[i]
        f = self.path / entry["file"]
        try:
            st = f.stat()
        except OSError:
            raise StoreError(f"shard {f} is listed in the manifest but missing; {REPAIR_HINT}") from None
        if st.st_size != entry["bytes"]:
            raise StoreError(f"shard {f} is corrupt or truncated: {st.st_size} bytes, the manifest says "
                             f"{entry['bytes']}; {REPAIR_HINT}")
        return f, st

    def check_shard(self, i: int, force: bool = False) -> None:
        """Raise StoreError unless shard i has its manifest size and sha256 (hashed once, then cached)."""
        f, st = self._shard_file(i)
        entry = self.manifest.shards[i]
        stamp = [entry["sha256"], st.st_size, st.st_mtime_ns]
        cache = self._verified_cache()
        if not force and cache.get(entry["file"]) == stamp:
            return
        if file_hash(f) != entry["sha256"]:
            raise StoreError(f"shard {f} is corrupt: its sha256 does not match the manifest; {REPAIR_HINT}")
        if time.time_ns() - st.st_mtime_ns > RACY_NS:  # a file changed within the mtime granularity could
            cache[entry["file"]] = stamp  # keep its stamp after a same-size edit: hash it again next time
            self._verified_dirty = self._verified_dirty or time.time()
            self._save_verified(force=i == len(self.manifest.shards) - 1)

    def verify(self, force: bool = False) -> None:
        """Check every shard (size, sha256; cached unless `force`); StoreError names the first bad one."""
        for i in range(len(self.manifest.shards)):
            self.check_shard(i, force)
        self._save_verified(force=True)

    def read_shard(self, i: int, keys: Sequence[str] | None = None, verify: bool = False) -> dict[str, torch.Tensor]:
        """One shard's tensors (all keys, or the ones named).

        Its size is checked on every read and its sha256 on the first (the result is cached in
        verified.json; verify=True hashes it again regardless). Non-finite activations raise StoreError.
        """
        if not 0 <= i < len(self.manifest.shards):
            raise StoreError(f"shard {i} does not exist: {str(self.path)!r} has {len(self.manifest.shards)} shards")
        self.check_shard(i, force=verify)
        f = self.path / self.manifest.shards[i]["file"]
        try:
            with safe_open(f, framework="pt") as sf:
                have = set(sf.keys())
                missing = [k for k in (keys or []) if k not in have]
                if missing:
                    raise StoreError(f"shard {f} has no tensors {missing}; it holds {sorted(have)}; {REPAIR_HINT}")
                out = {k: sf.get_tensor(k) for k in (keys or sorted(have))}
                for site in [k for k in out if k in self.manifest.sites]:
                    self._check_finite(i, site, out[site], sf)
                return out
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            if isinstance(e, MetalensError):
                raise
            raise StoreError(f"shard {f} cannot be read ({e}); {REPAIR_HINT}") from None

    def _check_finite(self, i: int, site: str, acts: torch.Tensor, sf) -> None:
        bad_rows = (~torch.isfinite(acts)).any(dim=-1) if acts.ndim == 2 else ~torch.isfinite(acts)
        if not bad_rows.any():
            return
        row = int(bad_rows.nonzero()[0, 0])
        before = sum(s["rows"] for s in self.manifest.shards[:i])
        text = int(sf.get_tensor("text_idx")[row]) if "text_idx" in sf.keys() else -1
        pos = int(sf.get_tensor("positions")[row]) if "positions" in sf.keys() else -1
        raise StoreError(
            f"shard {self.path / self.manifest.shards[i]['file']}: non-finite activations (NaN/inf) at site {site}, "
            f"row {row} of the shard (row {before + row} of the store), text {text} of {self.manifest.source!r} "
            f"(line {text + 1} of a .txt/.jsonl source), token position {pos}; refusing to read them; {REPAIR_HINT}"
        )

    def iter_shards(self, site: str, with_index: bool = False, verify: bool = False) -> Iterator:
        """Stream shard by shard: [rows, d] float32 (and the index dict when with_index)."""
        self._check_site(site)
        keys = [site, *INDEX_KEYS] if with_index else [site]
        for i in range(len(self.manifest.shards)):
            t = self.read_shard(i, keys, verify)
            acts = t[site].float()
            yield (acts, {k: t[k] for k in INDEX_KEYS}) if with_index else acts

    def load(self, site: str | None = None) -> Activations:
        """Everything (or one site) in memory as Activations."""
        sites = self.manifest.sites if site is None else [site]
        for s in sites:
            self._check_site(s)
        shards = [self.read_shard(i, [*sites, *INDEX_KEYS]) for i in range(len(self.manifest.shards))]
        if not shards:
            empty = torch.empty(0, dtype=torch.long)
            return Activations({s: torch.empty(0, self.manifest.widths[s]) for s in sites}, empty, empty, empty)
        return Activations(
            {s: torch.cat([t[s].float() for t in shards]) for s in sites},
            *(torch.cat([t[k] for t in shards]) for k in INDEX_KEYS),
        )

    def mean(self, site: str) -> torch.Tensor:
        """Mean activation [d] over all rows (from per-shard sums; no pass over the data)."""
        self._check_site(site)
        total = sum(self.read_shard(i, [f"{site}.sum"])[f"{site}.sum"] for i in range(len(self.manifest.shards)))
        return (total / max(1, self.manifest.n_rows)).float()

    def mean_norm(self, site: str) -> float:
        self._check_site(site)
        return sum(s["norm_sum"][site] for s in self.manifest.shards) / max(1, self.manifest.n_rows)

    def batches(
        self,
        site: str,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        shard_buffer: int = 4,
        drop_last: bool = True,
        skip_first: bool = False,
    ) -> Iterator[torch.Tensor]:
        """One epoch of [batch_size, d] float32 batches; shuffled across a buffer of shards and within it.

        skip_first drops the rows at token position 0 (an attention sink on many models)."""
        self._check_site(site)
        for name, v in (("batch_size", batch_size), ("shard_buffer", shard_buffer)):
            if not _is_int(v) or v < 1:
                raise DataError(f"{name} must be an integer >= 1, got {v!r}")
        gen = torch.Generator().manual_seed(seed)
        n_shards = len(self.manifest.shards)
        order = torch.randperm(n_shards, generator=gen).tolist() if shuffle else list(range(n_shards))
        leftover = torch.empty(0, self.manifest.widths[site])
        for start in range(0, len(order), shard_buffer):
            chunk = []
            for i in order[start : start + shard_buffer]:
                t = self.read_shard(i, [site, "positions"] if skip_first else [site])
                chunk.append(t[site].float()[t["positions"] > 0] if skip_first else t[site].float())
            pool = torch.cat([leftover, *chunk])  # [rows, d]
            if shuffle:
                pool = pool[torch.randperm(len(pool), generator=gen)]
            n_full = len(pool) // batch_size * batch_size
            yield from pool[:n_full].split(batch_size)
            leftover = pool[n_full:]
        if len(leftover) and not drop_last:
            yield leftover


def capture_to_store(
    subject: Subject,
    texts: Sequence[str],
    sites: Sequence[str] | str,
    out: str | os.PathLike,
    source: str = "texts",
    texts_per_shard: int = 256,
    batch_size: int = 16,
    max_length: int | None = 128,
    positions: Positions = "all",
    dtype: str = "float32",
    progress: bool = True,
    repair: bool = False,
) -> ActivationStore:
    """Capture texts into a store at `out`, resuming if `out` holds an unfinished capture of the same job.

    Empty texts are skipped (they keep their index). On resume every stored shard's size is checked
    (and, with `repair`, its hash): a bad shard is an error unless `repair`, which drops it and every
    later shard from the manifest and captures their texts again.
    """
    if isinstance(sites, str):
        sites = [sites]
    check_capture_args(texts, batch_size, max_length, positions)
    if not _is_int(texts_per_shard) or texts_per_shard < 1:
        raise DataError(f"texts_per_shard must be an integer >= 1, got {texts_per_shard!r}")
    if dtype not in DTYPES:
        raise DataError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if not any(texts):
        raise DataError(f"no text to capture: the {len(texts)} texts from {source!r} are all empty")
    if not sites:
        raise DataError("no site to capture: give at least one, e.g. resid.3")
    names = [str(subject.site(s)) for s in sites]
    want = Manifest(
        model=subject.name,
        model_fingerprint=subject.fingerprint,
        sites=names,
        widths={s: subject.width(s) for s in names},
        dtype=dtype,
        source=source,
        texts_sha256=texts_hash(texts),
        n_texts=len(texts),
        max_length=max_length,
        positions=str(positions),
    )
    out = Path(out)
    if (out / MANIFEST).exists():
        store = ActivationStore(out)
        have = store.manifest
        for key in ("model_fingerprint", "sites", "dtype", "texts_sha256", "max_length", "positions"):
            if getattr(have, key) != getattr(want, key):
                raise StoreError(
                    f"{str(out)!r} holds a different capture ({key}: {getattr(have, key)!r} there, "
                    f"{getattr(want, key)!r} now); use a new --out directory"
                )
        bad = store.first_bad_shard(full=repair)
        if bad is not None:
            i, why = bad
            if not repair:
                raise StoreError(f"{why}; rerun with --repair (capture_to_store(..., repair=True)) to drop shard {i} "
                                 f"and the {len(have.shards) - i - 1} after it and capture their texts again")
            store.truncate(i)
    elif out.exists() and not out.is_dir():
        raise StoreError(f"--out {str(out)!r} is a file; give a directory for the store")
    else:
        store = ActivationStore.create(out, want)
    m = store.manifest
    bar = tqdm(total=len(texts), initial=m.texts_done, desc=f"capture -> {out.name}", unit="text", disable=not progress)
    while m.texts_done < len(texts):
        start, end = m.texts_done, min(len(texts), m.texts_done + texts_per_shard)
        acts = capture(subject, texts[start:end], names, batch_size, max_length, positions, progress=False)
        acts.text_idx += start
        store.append(acts, end)
        bar.update(end - start)
    bar.close()
    store._save_verified(force=True)
    return store
