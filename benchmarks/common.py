"""What every benchmark shares: where results go and the facts that say where they were measured."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch

from metalens.io import atomic_write_json

RESULTS = Path(__file__).parent / "results"


def write_result(name: str, result: dict, threads: int | None = None) -> Path:
    """Write benchmarks/results/<name>.json (strict JSON, atomically) with the machine, torch version,
    thread count and UTC time added; print and return the path."""
    meta = dict(machine=platform.processor() or platform.machine(), cpus=os.cpu_count(), torch=torch.__version__,
                threads=threads if threads is not None else torch.get_num_threads(),
                when=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    path = RESULTS / f"{name}.json"
    atomic_write_json(path, {**meta, **result})
    print(f"wrote {path}")
    return path
