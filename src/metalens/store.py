"""ActivationStore: activations on disk as safetensors shards plus one manifest.json.

    out/manifest.json            what, from which model, how many rows, the shard list
    out/shard_00000.safetensors  per site [rows, d] (fp32/bf16/fp16), token_ids/text_idx/positions [rows],
                                 "<site>.sum" [d] float64 (running mean without a second pass)

Every write is atomic (temp file + rename), shard first, then the manifest that names it, so a
capture killed at any point resumes at the first text not in the manifest, losing and
duplicating nothing. Reads check each shard's size and hash and name the file if it is bad.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from tqdm.auto import tqdm

from .capture import Activations, Positions, capture
from .errors import MetalensError
from .io import atomic_write_bytes, atomic_write_json, texts_hash
from .models import Subject

MANIFEST = "manifest.json"
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


class ActivationStore:
    """A directory of activation shards. Open an existing one with ActivationStore(path)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not mpath.exists():
            raise StoreError(f"{str(self.path)!r} is not an activation store: no {MANIFEST} in it")
        try:
            self.manifest = Manifest(**json.loads(mpath.read_text()))
        except (json.JSONDecodeError, TypeError) as e:
            raise StoreError(f"{mpath} is not a valid manifest: {e}") from e

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
        m.shards.append(
            dict(
                file=name,
                rows=len(acts),
                texts=[m.texts_done, texts_end],
                bytes=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                norm_sum=norm_sum,
            )
        )
        m.n_rows += len(acts)
        m.texts_done = texts_end
        m.stats = {site: {"mean_norm": self.mean_norm(site)} for site in m.sites}
        atomic_write_json(self.path / MANIFEST, asdict(m))

    # ---- reading -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.manifest.n_rows

    @property
    def sites(self) -> list[str]:
        return self.manifest.sites

    def _check_site(self, site: str) -> None:
        if site not in self.manifest.sites:
            raise StoreError(f"site {site!r} is not in store {str(self.path)!r}; it holds {self.manifest.sites}")

    def read_shard(self, i: int, keys: Sequence[str] | None = None, verify: bool = True) -> dict[str, torch.Tensor]:
        """One shard's tensors (all keys, or the ones named). verify=False memory-maps without hashing."""
        entry = self.manifest.shards[i]
        f = self.path / entry["file"]
        if not f.exists():
            raise StoreError(f"shard {f} is listed in the manifest but missing")
        size = f.stat().st_size
        if size != entry["bytes"]:
            raise StoreError(f"shard {f} is corrupt or truncated: {size} bytes, the manifest says {entry['bytes']}")
        try:
            if verify:
                data = f.read_bytes()
                if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                    raise StoreError(f"shard {f} is corrupt: its sha256 does not match the manifest")
                out = st_load(data)
                return out if keys is None else {k: out[k] for k in keys}
            with safe_open(f, framework="pt") as sf:
                return {k: sf.get_tensor(k) for k in (keys or sf.keys())}
        except (SafetensorError, OSError, ValueError) as e:
            raise StoreError(f"shard {f} cannot be read: {e}") from e

    def iter_shards(self, site: str, with_index: bool = False, verify: bool = True) -> Iterator:
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
        shards = [self.read_shard(i) for i in range(len(self.manifest.shards))]
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
) -> ActivationStore:
    """Capture texts into a store at `out`, resuming if `out` holds an unfinished capture of the same job."""
    if isinstance(sites, str):
        sites = [sites]
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
    return store
