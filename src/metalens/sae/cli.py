"""`metalens sae train|eval|pages`: thin commands over metalens.sae."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer

sae_app = typer.Typer(no_args_is_help=True, help="Sparse autoencoders: train, evaluate, feature pages.")


def _texts(path: Optional[Path], limit: int | None = None) -> list[str]:
    from ..cli import read_texts
    from .data import corpus_texts

    texts = read_texts(path) if path is not None else corpus_texts()
    return texts[:limit] if limit else texts


@sae_app.command("train")
def train_cmd(
    store: Optional[Path] = typer.Option(None, "--store", help="ActivationStore directory (from `metalens capture`)"),
    texts: Optional[Path] = typer.Option(None, "--texts", help="no store: capture these texts first (.txt/.jsonl)"),
    site: str = typer.Option("resid.15", help="site to read"),
    k: str = typer.Option("32", "--k", help="latents kept per token; a comma list (16,32,64) trains a sweep"),
    width: int = typer.Option(4608, help="number of latents"),
    kind: str = typer.Option("topk", help="topk | batchtopk"),
    batch_size: int = typer.Option(4096, help="rows per step"),
    steps: int = typer.Option(1000, help="optimizer steps"),
    lr: float = typer.Option(0.0, help="Adam lr; 0 = 2e-4 / sqrt(width / 2^14)"),
    out: Optional[Path] = typer.Option(None, "--out", help="output dir (default saes/<site>-<kind>-w<width>)"),
    seed: int = typer.Option(0, help="init and data-order seed"),
    eval_rows: int = typer.Option(20000, help="rows of the store for the final metrics / frontier"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="local HF model dir (only with --texts)"),
    device: str = typer.Option("auto", "--device"),
    as_json: bool = typer.Option(False, "--json", help="print machine-readable JSON on stdout"),
):
    """Train an SAE (or a sweep over k) on stored activations; resumes if OUT holds a checkpoint."""
    from ..cli import _load, emit
    from ..results import ResultsDB
    from ..store import ActivationStore, capture_to_store
    from ..viz.sae import plot_frontier
    from .metrics import reconstruction_metrics
    from .train import SaeTrainConfig, train_sae

    ks = [int(x) for x in k.split(",") if x.strip()]
    out = out or Path("saes") / f"{site}-{kind}-w{width}"
    if store is None:
        s = _load(model, device)
        store = out / "acts"
        capture_to_store(s, _texts(texts), [site], store, source=str(texts or "pydoc corpus"), progress=not as_json)
    st = ActivationStore(store)
    results, points = [], []
    db = ResultsDB()
    for kk in ks:
        cfg = SaeTrainConfig(out=str(out / f"k{kk}" if len(ks) > 1 else out), site=site, k=kk, width=width, kind=kind,
                             batch_size=batch_size, steps=steps, lr=lr, seed=seed)
        with db.run("sae.train", {**asdict(cfg), "store": str(store)}) as run:
            sae = train_sae(cfg, st, progress=not as_json)
            m = reconstruction_metrics(sae, st, site, max_rows=eval_rows)
            run.outputs["sae"] = cfg.out
        results.append(dict(k=kk, out=cfg.out, **m))
        points.append(dict(k=kk, l0=m["l0"], fvu=m["fvu"]))
    summary = dict(store=str(store), site=site, results=results)
    if len(ks) > 1:
        summary["frontier_png"] = str(plot_frontier(points, out / "frontier.png", title=f"{st.manifest.model} {site}"))
    emit(summary, as_json)


@sae_app.command("eval")
def eval_cmd(
    sae_dir: Path = typer.Argument(..., help="SAE directory (ours or SAELens: cfg.json + sae_weights.safetensors)"),
    store: Optional[Path] = typer.Option(None, "--store", help="store for reconstruction metrics"),
    texts: Optional[Path] = typer.Option(None, "--texts", help="texts for the CE-loss view (default: built-in corpus)"),
    site: Optional[str] = typer.Option(None, help="site (default: the SAE's own)"),
    rows: int = typer.Option(20000, help="token window for reconstruction metrics and dead fraction"),
    n_texts: int = typer.Option(64, help="texts for the CE-loss view"),
    max_length: int = typer.Option(128, help="tokens per text"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="local HF model dir; default SmolLM2-135M-Instruct"),
    device: str = typer.Option("auto", "--device"),
    as_json: bool = typer.Option(False, "--json", help="print machine-readable JSON on stdout"),
):
    """L0, FVU, explained variance, cosine, l2 ratio, dead fraction; CE loss clean / SAE / zero, CE recovered, KL."""
    from ..capture import capture
    from ..cli import _load, emit
    from ..results import ResultsDB
    from ..store import ActivationStore
    from .io import load_sae
    from .metrics import lm_metrics, reconstruction_metrics

    sae = load_sae(sae_dir)
    site = site or sae.cfg.site
    if not site:
        raise typer.BadParameter("the SAE does not name its site; pass --site", param_hint="--site")
    s = _load(model, device)
    data = _texts(texts, n_texts)
    with ResultsDB().run("sae.eval", dict(sae=str(sae_dir), store=str(store), site=site, rows=rows)) as run:
        if store is not None:
            recon = reconstruction_metrics(sae, ActivationStore(store), site, max_rows=rows)
        else:
            acts = capture(s, data, [site], max_length=max_length)
            recon = reconstruction_metrics(sae, acts[site][acts.positions > 0][:rows])
        lm = lm_metrics(s, sae, site, data, max_length=max_length)
        run.outputs["metrics"] = {**recon, **lm}
    emit(dict(sae=str(sae_dir), site=site, **recon, **lm), as_json)


@sae_app.command("pages")
def pages_cmd(
    sae_dir: Path = typer.Argument(..., help="SAE directory (ours or SAELens layout)"),
    store: Path = typer.Option(..., "--store", help="ActivationStore holding the SAE's site (positions=all)"),
    latents: str = typer.Option("0-31", help="latents: '0-31', '3,17,40', or 'top50' (the most active ones)"),
    out: Path = typer.Option(Path("pages"), "--out", help="directory for index.html + feature_<i>.html"),
    rows: int = typer.Option(50000, help="tokens of the store to scan"),
    neuronpedia: Optional[Path] = typer.Option(None, "--neuronpedia", help="also write Neuronpedia batch JSON here"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="local HF model dir; default SmolLM2-135M-Instruct"),
    device: str = typer.Option("auto", "--device"),
    as_json: bool = typer.Option(False, "--json", help="print machine-readable JSON on stdout"),
):
    """Static HTML feature pages (top contexts by quantile, histogram, logit effects); Neuronpedia export."""
    import torch

    from ..cli import _load, emit
    from ..store import ActivationStore
    from ..viz.sae_pages import write_pages
    from .features import neuronpedia_export, sae_cards
    from .io import load_sae

    sae = load_sae(sae_dir)
    st = ActivationStore(store)
    site = sae.cfg.site if sae.cfg.site in st.sites else st.sites[0]
    acts = st.load(site)
    acts = acts.select(torch.arange(min(rows, len(acts))))
    acts = acts.select(acts.positions > 0)  # position 0: attention sink, ~100x the norm, not a feature
    if latents.startswith("top"):
        n = int(latents[3:])
        freq = sum((sae.encode(acts[site][i : i + 4096]) > 0).sum(0) for i in range(0, len(acts), 4096))
        chosen = freq.argsort(descending=True)[:n].tolist()
    else:
        chosen = []
        for part in latents.split(","):
            lo, _, hi = part.partition("-")
            chosen += list(range(int(lo), int(hi or lo) + 1))
    s = _load(model, device)
    cards = sae_cards(sae, acts, chosen, s, site=site)
    index = write_pages(cards, out, title=f"{sae.cfg.model or s.name} {site} {sae_dir}")
    summary = dict(index=str(index), features=len(cards), site=site, rows=len(acts))
    if neuronpedia is not None:
        layer = int(site.split(".")[1])
        summary["neuronpedia"] = neuronpedia_export(cards, str(neuronpedia), model_id=s.name.lower(), layer=layer,
                                                    sae_set=Path(sae_dir).name)
    emit(summary, as_json)
