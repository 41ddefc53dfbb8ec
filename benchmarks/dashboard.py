"""Dashboard speed and memory on a store read by an SAE with 10^5 latents (synthetic activations).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dashboard.py [--latents 100000] [--rows 20000] [--work DIR]

A real `python -m metalens.dashboard` process (default model, 1 thread, no oracle) serves a synthetic
store (resid.15, d=576, random token ids) and a random TopK SAE. Reported:
  first_page_fresh_server_s  the first feature page of a fresh server: loads the model and the SAE, one
                      streamed pass writes the sparse index, renders (index_build_s: that pass alone, in-process)
  page_first_render_s a feature page (HTML, logit lens included) with the index on disk, median over
                      --pages random latents, and the first one after a restart (cold page cache aside)
  peer_card_s         the same card the static-export way (metalens.sae.features.sae_cards: the store in
                      memory, every row encoded), in this process: the cost a page pays without the index
  rss_mb              the server's resident memory: after start (index on disk), peak while building the index, after
                      the page runs on a restarted server that finds the index on disk
  first_token_s       Generate -> first streamed token (SSE, one SAE-latent reading), median of 5, against
                      model.generate(max_new_tokens=1) on the same prompt in this process
Writes benchmarks/results/dashboard.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import torch

from metalens.capture import Activations
from metalens.io import atomic_write_json
from metalens.sae import Sae, SaeConfig, save_sae
from metalens.store import ActivationStore, Manifest

ROOT = Path(__file__).parent
SITE, D = "resid.15", 576


def build(work: Path, rows: int, latents: int) -> tuple[Path, Path]:
    store_dir, sae_dir = work / "store", work / f"sae-{latents}"
    if not (store_dir / "manifest.json").exists():
        g = torch.Generator().manual_seed(0)
        m = Manifest(model="SmolLM2-135M-Instruct", model_fingerprint="synthetic", sites=[SITE], widths={SITE: D},
                     dtype="float32", source="synthetic", texts_sha256="synthetic", n_texts=rows // 64,
                     max_length=64, positions="all")
        store = ActivationStore.create(store_dir, m)
        for t0 in range(0, rows // 64, 32):  # 32 texts of 64 tokens per shard
            n = 32 * 64
            acts = torch.randn(n, D, generator=g) * 2 + torch.randn(D, generator=g)
            text = torch.arange(t0, t0 + 32).repeat_interleave(64)
            store.append(Activations({SITE: acts}, torch.randint(0, 49152, (n,), generator=g), text,
                                     torch.arange(64).repeat(32)), t0 + 32)
    if not (sae_dir / "cfg.json").exists():
        sae = Sae(SaeConfig(d_in=D, width=latents, k=32, site=SITE, model="SmolLM2-135M-Instruct"), seed=0)
        save_sae(sae, sae_dir)
    return store_dir, sae_dir


def rss(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    get = lambda k: int(next(line.split()[1] for line in status.splitlines() if line.startswith(k))) / 1024  # noqa: E731
    return {"rss_mb": round(get("VmRSS:"), 1), "peak_mb": round(get("VmHWM:"), 1)}


class Server:
    def __init__(self, store: Path, sae: Path, work: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
        self.proc = subprocess.Popen([sys.executable, "-m", "metalens.dashboard", "--db", str(work / "results.sqlite"),
                                      "--store", str(store), "--sae", str(sae), "--port", str(self.port), "--no-oracle"],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"
        for _ in range(600):
            try:
                self.get("/")
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the dashboard did not start")

    def get(self, path: str, timeout: float = 900) -> tuple[float, bytes]:
        t = time.perf_counter()
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            body = r.read()
        return time.perf_counter() - t, body

    def first_token(self, prompt: str, features: str) -> float:
        q = urllib.parse.urlencode(dict(prompt=prompt, features=features, max_new_tokens=8, job="bench"))
        t = time.perf_counter()
        with urllib.request.urlopen(f"{self.url}/api/monitor/stream?{q}", timeout=600) as r:
            for line in r:
                if line.startswith(b"event: token"):
                    first = time.perf_counter() - t
                    r.read()  # let the generation finish before the next one
                    return first
        raise RuntimeError("no token streamed")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latents", type=int, default=100_000)
    ap.add_argument("--rows", type=int, default=20_480)
    ap.add_argument("--pages", type=int, default=20)
    ap.add_argument("--work", type=Path, default=Path("/tmp/metalens-bench-dashboard"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    store_dir, sae_dir = build(args.work, args.rows, args.latents)
    for old in sae_dir.glob("dashboard-index-*"):
        old.unlink()
    g = torch.Generator().manual_seed(1)
    out: dict = dict(latents=args.latents, rows=len(ActivationStore(store_dir)), d_in=D, k=32,
                     store_mb=round(sum(f.stat().st_size for f in store_dir.iterdir()) / 2**20, 1),
                     sae_mb=round(sum(f.stat().st_size for f in sae_dir.iterdir()) / 2**20, 1),
                     machine=dict(cpu=platform.processor() or platform.machine(), threads=1, python=platform.python_version()))

    srv = Server(store_dir, sae_dir, args.work)  # fresh: builds the index at start (background) / first page
    t, _ = srv.get("/feature/sae0/0")  # loads the model and the SAE, builds the index, renders
    out["first_page_fresh_server_s"] = round(t, 2)
    out["rss_after_index_build"] = rss(srv.proc.pid)
    srv.stop()

    srv = Server(store_dir, sae_dir, args.work)  # restarted: finds the index on disk
    time.sleep(1)
    out["rss_after_start"] = rss(srv.proc.pid)  # no model yet, the index memory-mapped
    srv.get("/search?q=zz&mode=token")  # loads the model (logit lens, token decoding) and maps the index
    latents = torch.randint(0, args.latents, (args.pages,), generator=g).tolist()
    times = [srv.get(f"/feature/sae0/{i}")[0] for i in latents]
    out["page_first_render_s"] = dict(first=round(times[0], 4), median=round(statistics.median(times), 4),
                                      max=round(max(times), 4), pages=len(times))
    out["rss_after_pages"] = rss(srv.proc.pid)
    index_file = next(sae_dir.glob("dashboard-index-*"))
    out["index_mb"] = round(index_file.stat().st_size / 2**20, 1)
    tt = [srv.first_token("Tell me about Paris.", "sae0:0") for _ in range(6)][1:]  # first one loads the SAE
    out["first_token_s"] = dict(median=round(statistics.median(tt), 4), runs=len(tt))
    out["rss_after_monitor"] = rss(srv.proc.pid)
    srv.stop()

    # peers, in this process: the static-export card (everything in memory) and plain generate of one token
    from metalens import load_subject
    from metalens.sae import load_sae
    from metalens.sae.features import sae_cards

    t = time.perf_counter()
    s = load_subject(device="cpu")
    out["model_load_s"] = round(time.perf_counter() - t, 2)
    from metalens.dashboard.sources import SaeSource

    t = time.perf_counter()
    SaeSource("bench", ActivationStore(store_dir), sae_dir).build_index()  # SAE load + one pass + atomic write
    out["index_build_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    acts = ActivationStore(store_dir).load(SITE)
    sae = load_sae(sae_dir)
    sae_cards(sae, acts, [latents[0]], s, batch_size=256)
    out["peer_card_s"] = round(time.perf_counter() - t, 2)
    out["page_speedup_vs_peer"] = round(out["peer_card_s"] / out["page_first_render_s"]["median"], 1)
    gen = []
    for _ in range(6):
        t = time.perf_counter()
        s.generate("Tell me about Paris.", max_new_tokens=1)
        gen.append(time.perf_counter() - t)
    out["peer_generate_1_token_s"] = round(statistics.median(gen[1:]), 4)
    out["first_token_vs_generate_1"] = round(out["first_token_s"]["median"] / out["peer_generate_1_token_s"], 2)
    print(json.dumps(out, indent=2))
    atomic_write_json(ROOT / "results" / "dashboard.json", out)


if __name__ == "__main__":
    main()
