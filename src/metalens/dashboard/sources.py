"""Where the dashboard's features come from, read lazily from disk.

A source is a family of features over one ActivationStore:
  SaeSource    the latents of an SAE directory (10^5 of them is fine). On first use one streamed pass
               encodes the store and writes a sparse index beside the SAE, atomically:
               `dashboard-index-<store hash>.safetensors` holding, per latent, the rows where it
               fires and the values (CSR by latent) and, per row, the latents that fire (CSR by row).
               Pages then memory-map that file and read only their latent's slice.
  DenseSource  coordinates of a stored site (neurons.L) or linear directions on it (probes,
               steering vectors): a page streams the store shard by shard, one shard in memory; a
               per-feature summary (density, max) is cached beside the store.

Every source gives `values(i) -> Values` (the rows and values of one feature) and `summary()`
(density and max of every feature, for the index), and the token index of its store.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
from safetensors.torch import save as st_save

from ..errors import DataError
from ..features import Feature
from ..io import atomic_write_bytes
from ..store import INDEX_KEYS, ActivationStore

INDEX_VERSION = 1
ST_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32, "F64": np.float64}


class Values(NamedTuple):
    """One feature's values over a store's rows."""

    rows: np.ndarray
    """[m] int64 row numbers (sparse: only where the feature fires; dense: every row)"""
    values: np.ndarray
    """[m] float32 values on those rows"""
    n_rows: int
    """rows in the store (frac_nonzero = (values > 0).sum() / n_rows)"""


class Summary(NamedTuple):
    """Per-feature numbers for the feature index."""

    density: np.ndarray
    """[n_features] fraction of rows where the feature is > 0"""
    max_act: np.ndarray
    """[n_features] largest value"""


def mmap_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as a read-only numpy memmap (nothing is read until indexed)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        shape = tuple(meta["shape"])
        if end == start:
            out[name] = np.zeros(shape, ST_DTYPES[meta["dtype"]])
            continue
        out[name] = np.memmap(path, ST_DTYPES[meta["dtype"]], "r", 8 + n + start, shape)
    return out


def store_key(store: ActivationStore) -> str:
    """A short hash naming the store's contents (its shard hashes): an index for it is valid while it matches."""
    h = hashlib.sha256(json.dumps([s["sha256"] for s in store.manifest.shards]).encode())
    return h.hexdigest()[:12]


class TokenIndex:
    """token id, text and position of every row of a store, read once (3 ints a row)."""

    def __init__(self, store: ActivationStore):
        parts = [store.read_shard(i, list(INDEX_KEYS), verify=False) for i in range(len(store.manifest.shards))]
        cat = lambda k: torch.cat([p[k] for p in parts]).numpy() if parts else np.zeros(0, np.int64)  # noqa: E731
        self.token_ids, self.text_idx, self.positions = (cat(k) for k in INDEX_KEYS)

    def __len__(self) -> int:
        return len(self.token_ids)


@dataclass
class Source:
    """Common part of a feature source: a name, the store it reads and its site."""

    key: str
    """short name used in URLs, e.g. "sae0" """
    label: str
    """what to show, e.g. "resid.2 SAE topk k=8 w=256 (sae/)" """
    store: ActivationStore
    """the store whose rows the features are read on"""
    site: str
    """the site the features read, e.g. "resid.2" """
    kind: Literal["sae", "neurons", "directions"]
    """latents, coordinates or directions"""

    def __post_init__(self):
        self._tokens: TokenIndex | None = None
        self._lock = threading.Lock()

    @property
    def layer(self) -> int:
        return int(self.site.split(".")[1])

    @property
    def tokens(self) -> TokenIndex:
        with self._lock:
            if self._tokens is None:
                self._tokens = TokenIndex(self.store)
            return self._tokens


class SaeSource(Source):
    def __init__(self, key: str, store: ActivationStore, sae_dir: Path):
        cfg = json.loads((sae_dir / "cfg.json").read_text())
        meta = cfg.get("metadata") or {}
        site = meta.get("hook_name") or cfg.get("hook_name") or ""
        ours = meta.get("metalens") or {}
        self.sae_dir, self.width, self.d_in = sae_dir, int(cfg["d_sae"]), int(cfg["d_in"])
        self.tag = f"sae-{ours.get('kind', cfg.get('architecture'))}-k{cfg.get('k', ours.get('k', 0))}-w{self.width}"
        super().__init__(key, f"{site} SAE {self.tag} ({sae_dir.name})", store, site, "sae")
        self.index_path = sae_dir / f"dashboard-index-{store_key(store)}.safetensors"
        self._index: dict[str, np.ndarray] | None = None
        self._index_lock = threading.Lock()  # one build, however many requests ask at once
        self._sae = None

    @property
    def n_features(self) -> int:
        return self.width

    def feature_id(self, i: int) -> str:
        """The id autointerp records explanations under (metalens.sae.features.sae_feature)."""
        return f"{self.site}/{self.tag}:{i}"

    def sae(self):
        """The SAE itself (loaded on first use: try-it, steering, the monitor, the index build)."""
        from ..sae.io import load_sae

        with self._lock:
            if self._sae is None:
                self._sae = load_sae(self.sae_dir)
            return self._sae

    def feature(self, i: int) -> Feature:
        from ..sae.features import sae_feature

        return sae_feature(self.sae(), i, self.site)

    def direction(self, i: int) -> torch.Tensor:
        """Decoder row i [d_in], read from the weights file without loading the rest."""
        from safetensors import safe_open

        with safe_open(self.sae_dir / "sae_weights.safetensors", framework="pt") as f:
            return f.get_slice("W_dec")[i : i + 1][0].float()

    # ---- the sparse index ------------------------------------------------------------------
    def index(self) -> dict[str, np.ndarray]:
        with self._index_lock:
            if self._index is None:
                if not self.index_path.exists():
                    self.build_index()
                idx = mmap_safetensors(self.index_path)
                if int(idx["version"][0]) != INDEX_VERSION or len(idx["latent_ptr"]) != self.width + 1:
                    self.build_index()
                    idx = mmap_safetensors(self.index_path)
                self._index = idx
            return self._index

    @torch.no_grad()
    def build_index(self, chunk: int = 128) -> Path:
        """One streamed pass over the store: encode every row, keep where each latent fires."""
        sae = self.sae()
        rows, lats, vals = [], [], []
        offset = 0
        for acts in self.store.iter_shards(self.site):  # [shard_rows, d] one shard at a time
            for s in range(0, len(acts), chunk):
                lat = sae.encode(acts[s : s + chunk])  # [chunk, width]
                r, c = lat.nonzero(as_tuple=True)
                rows.append((r + offset + s).to(torch.int64))
                lats.append(c.to(torch.int32))
                vals.append(lat[r, c].float())
            offset += len(acts)
        row = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.int64)
        lat = torch.cat(lats) if lats else torch.zeros(0, dtype=torch.int32)
        val = torch.cat(vals) if vals else torch.zeros(0)
        order = torch.argsort(lat.long() * (offset + 1) + row, stable=True)  # by latent, then row
        count = torch.bincount(lat.long(), minlength=self.width)
        row_count = torch.bincount(row, minlength=offset)
        maxes = torch.zeros(self.width).scatter_reduce(0, lat.long(), val, "amax", include_self=True)
        tensors = {
            "version": torch.tensor([INDEX_VERSION]),
            "latent_ptr": torch.cat([torch.zeros(1, dtype=torch.int64), count.cumsum(0)]),
            "latent_rows": row[order].contiguous(),
            "latent_values": val[order].contiguous(),
            "row_ptr": torch.cat([torch.zeros(1, dtype=torch.int64), row_count.cumsum(0)]),
            "row_latents": lat.contiguous(),  # already in row order
            "row_values": val.contiguous(),
            "density": count.float() / max(1, offset),
            "max_act": maxes,
        }
        atomic_write_bytes(self.index_path, st_save(tensors, metadata={"sae": str(self.sae_dir), "rows": str(offset)}))
        return self.index_path

    def values(self, i: int) -> Values:
        self.check(i)
        idx = self.index()
        a, b = int(idx["latent_ptr"][i]), int(idx["latent_ptr"][i + 1])
        return Values(np.asarray(idx["latent_rows"][a:b]), np.asarray(idx["latent_values"][a:b], np.float32),
                      len(self.store))

    def summary(self) -> Summary:
        idx = self.index()
        return Summary(np.asarray(idx["density"]), np.asarray(idx["max_act"]))

    def correlated(self, i: int, n: int = 10, max_rows: int = 5000) -> list[tuple[int, float, int]]:
        """[(latent, Jaccard overlap, co-active rows)] of the latents firing together with latent i."""
        idx = self.index()
        rows = self.values(i).rows[:max_rows]
        if len(rows) == 0:
            return []
        ptr = idx["row_ptr"]
        others = np.concatenate([np.asarray(idx["row_latents"][ptr[r] : ptr[r + 1]]) for r in rows])
        co = np.bincount(others, minlength=self.width).astype(np.float64)
        co[i] = 0
        count = np.diff(np.asarray(idx["latent_ptr"])).astype(np.float64)
        jac = co / np.maximum(1, len(rows) + count - co)
        top = np.argsort(-jac)[:n]
        return [(int(j), float(jac[j]), int(co[j])) for j in top if co[j] > 0]

    def latents_on_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(latents, values) of every entry on the given rows (for search by token)."""
        idx = self.index()
        ptr = idx["row_ptr"]
        lat = [np.asarray(idx["row_latents"][ptr[r] : ptr[r + 1]]) for r in rows]
        val = [np.asarray(idx["row_values"][ptr[r] : ptr[r + 1]]) for r in rows]
        return (np.concatenate(lat), np.concatenate(val)) if lat else (np.zeros(0, np.int32), np.zeros(0, np.float32))

    def check(self, i: int) -> None:
        if not 0 <= i < self.width:
            raise DataError(f"latent {i} is out of range: {self.label} has latents 0..{self.width - 1}")


class DenseSource(Source):
    """Coordinates of a site (weight None) or directions on it: values = acts @ weight + bias."""

    def __init__(self, key: str, store: ActivationStore, site: str, names: list[str] | None = None,
                 weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                 thresholds: list[float | None] | None = None, label: str | None = None):
        kind = "neurons" if weight is None else "directions"
        width = store.manifest.widths[site]
        self.weight = None if weight is None else weight.float().reshape(width, -1)  # [d, n_features]
        self.bias = torch.zeros(self.weight.shape[1]) if bias is None and weight is not None else bias
        n = width if weight is None else self.weight.shape[1]
        self.names = names or [str(i) for i in range(n)]
        self.thresholds = thresholds or [None] * n
        super().__init__(key, label or f"{site} {kind} ({store.path.name})", store, site, kind)
        self.summary_path = store.path / f"dashboard-summary-{key}-{site}-{store_key(store)}.safetensors"
        self._summary: Summary | None = None

    @property
    def n_features(self) -> int:
        return len(self.names)

    def feature_id(self, i: int) -> str:
        return f"{self.site}:{i}" if self.weight is None else f"{self.site}/dir:{self.names[i]}"

    def feature(self, i: int) -> Feature:
        self.check(i)
        if self.weight is None:
            return Feature.neuron(self.site, i)
        return Feature.from_direction(self.site, self.weight[:, i], self.names[i], float(self.bias[i]))

    def direction(self, i: int) -> torch.Tensor | None:
        return None if self.weight is None else self.weight[:, i]

    def apply(self, acts: torch.Tensor) -> torch.Tensor:  # [rows, d] -> [rows, n_features]
        return acts if self.weight is None else acts @ self.weight + self.bias

    def shards(self):
        for i in range(len(self.store.manifest.shards)):
            yield self.store.read_shard(i, [self.site], verify=False)[self.site].float()  # [rows, d]

    def values(self, i: int) -> Values:
        self.check(i)
        col = [self.apply(a)[:, i] for a in self.shards()]
        v = torch.cat(col).numpy() if col else np.zeros(0, np.float32)
        return Values(np.arange(len(v)), v.astype(np.float32), len(v))

    def correlated(self, i: int, n: int = 10) -> list[tuple[int, float, int]]:
        """[(feature, Pearson r, rows)] over the store, streamed (sums of products, one pass)."""
        s1 = s2 = sxy = sy = syy = None
        rows = 0
        for a in self.shards():
            y = self.apply(a).double()  # [rows, n_features]
            x = y[:, i]
            if s1 is None:
                s1, s2 = 0.0, 0.0
                sxy, sy, syy = (torch.zeros(y.shape[1], dtype=torch.float64) for _ in range(3))
            s1, s2 = s1 + x.sum(), s2 + (x * x).sum()
            sxy += x @ y
            sy += y.sum(0)
            syy += (y * y).sum(0)
            rows += len(y)
        if not rows:
            return []
        cov = sxy / rows - (s1 / rows) * (sy / rows)
        var = (s2 / rows - (s1 / rows) ** 2) * (syy / rows - (sy / rows) ** 2)
        r = torch.where(var > 0, cov / var.clamp_min(1e-30).sqrt(), torch.zeros_like(cov))
        r[i] = 0
        top = r.abs().argsort(descending=True)[:n]
        return [(int(j), float(r[j]), rows) for j in top if r[j] != 0]

    def summary(self) -> Summary:
        if self._summary is None:
            if self.summary_path.exists():
                t = mmap_safetensors(self.summary_path)
                self._summary = Summary(np.asarray(t["density"]), np.asarray(t["max_act"]))
                return self._summary
            nz, mx, rows = None, None, 0
            for a in self.shards():
                y = self.apply(a)
                nz = (y > 0).sum(0) if nz is None else nz + (y > 0).sum(0)
                m = y.max(0).values
                mx = m if mx is None else torch.maximum(mx, m)
                rows += len(y)
            if nz is None:
                nz, mx = torch.zeros(self.n_features), torch.zeros(self.n_features)
            density = nz.float() / max(1, rows)
            try:
                atomic_write_bytes(self.summary_path, st_save({"density": density, "max_act": mx.float()}))
            except OSError:
                pass  # a read-only store: recompute next time
            self._summary = Summary(density.numpy(), mx.float().numpy())
        return self._summary

    def check(self, i: int) -> None:
        if not 0 <= i < self.n_features:
            raise DataError(f"feature {i} is out of range: {self.label} has features 0..{self.n_features - 1}")


def open_sources(stores: list[str | os.PathLike], saes: list[str | os.PathLike], probes: list = ()) -> list[Source]:
    """Pair every SAE with the first store holding its site; every neurons.* site of a store is a source too.

    `probes` are objects with .site, .weight [d], .bias, .name, .threshold (metalens.probes.Probe) read on the
    first store holding their site.
    """
    opened = [ActivationStore(p) for p in stores]
    out: list[Source] = []
    for n, d in enumerate(saes):
        d = Path(d)
        if not (d / "cfg.json").exists():
            raise DataError(f"{str(d)!r} is not an SAE directory (no cfg.json); give a directory saved by metalens sae train")
        cfg = json.loads((d / "cfg.json").read_text())
        site = (cfg.get("metadata") or {}).get("hook_name") or cfg.get("hook_name") or ""
        store = next((s for s in opened if site in s.sites), None)
        if store is None:
            raise DataError(f"SAE {str(d)!r} reads site {site!r}, which none of the stores holds "
                            f"({', '.join(f'{s.path}: {s.sites}' for s in opened) or 'no --store given'})")
        out.append(SaeSource(f"sae{n}", store, d))
    for n, s in enumerate(opened):
        for site in s.sites:
            if site.startswith("neurons."):
                out.append(DenseSource(f"neurons{n}-{site.split('.')[1]}", s, site))
    for n, p in enumerate(probes):
        store = next((s for s in opened if p.site in s.sites), None)
        if store is None:
            raise DataError(f"probe {p.name!r} reads site {p.site!r}, which none of the stores holds")
        out.append(DenseSource(f"probe{n}", store, p.site, [p.name], p.weight.reshape(-1, 1),
                               torch.tensor([float(p.bias)]), [p.threshold], label=f"{p.site} probe {p.name}"))
    return out
