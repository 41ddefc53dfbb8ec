"""`metalens sae train|eval|pages`: thin commands over metalens.sae."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import DataError
from .common import ColumnOpt, DeviceOpt, JsonOpt, ModelOpt, Output, at_least, command, load_model, parse_indices, read_texts

from ..sae.train import SaeTrainConfig

_T = SaeTrainConfig(out="")  # the defaults of `sae train` are the config's

sae_app = typer.Typer(no_args_is_help=True, help="Sparse autoencoders: train, evaluate, feature pages.")


def _texts(path: Optional[Path], column: str = "text", limit: int | None = None) -> list[str]:
    from ..io import pydoc_texts

    texts = read_texts(path, column, limit) if path is not None else pydoc_texts()
    return texts[:limit] if limit else texts


def check_site(sae_site: str | None, store_sites: list[str], given: str | None = None) -> str:
    """The one site an SAE, a store and the user agree on; any mismatch is an error naming them."""
    site = given or sae_site
    if not site:
        raise DataError("the SAE does not name its site; pass --site")
    if sae_site and given and given != sae_site:
        raise DataError(f"--site {given} differs from the SAE's own site {sae_site}; drop --site or use a matching SAE")
    if site not in store_sites:
        raise DataError(f"the SAE reads {site} but the store holds {store_sites}; capture {site} into a store first "
                        f"(metalens capture --sites {site} ...)")
    return site


def check_width(sae, site: str, width: int, where: str) -> None:
    """The SAE's input width must be the site's width in the store / model it reads."""
    if sae.cfg.d_in != width:
        raise DataError(f"the SAE reads {site} of width {sae.cfg.d_in} but {site} in {where} has width {width}: "
                        "they come from different models")


@command(sae_app, "train", kind="sae.train")
def train_cmd(
    store: Optional[Path] = typer.Option(None, "--store", help="ActivationStore directory (from `metalens capture`)"),
    texts: Optional[Path] = typer.Option(None, "--texts", help="no store: capture these texts first (.txt/.jsonl/dataset)"),
    column: str = ColumnOpt,
    site: str = typer.Option(_T.site, help="site to read"),
    k: str = typer.Option(str(_T.k), "--k", help="latents kept per token; a comma list (16,32,64) trains a sweep"),
    width: int = typer.Option(_T.width, help="number of latents"),
    kind: str = typer.Option(_T.kind, help="topk | batchtopk"),
    batch_size: int = typer.Option(_T.batch_size, help="rows per step"),
    steps: int = typer.Option(_T.steps, help="optimizer steps"),
    lr: float = typer.Option(_T.lr, help="Adam lr; 0 = 2e-4 / sqrt(width / 2^14)"),
    out: Optional[Path] = typer.Option(None, "--out", help="output dir (default saes/<site>-<kind>-w<width>)"),
    seed: int = typer.Option(_T.seed, help="init and data-order seed"),
    eval_rows: int = typer.Option(20000, help="rows of the store for the final metrics / frontier"),
    model: Optional[str] = ModelOpt,
    device: str = DeviceOpt,
    as_json: bool = JsonOpt,
):
    """Train an SAE (or a sweep over k) on stored activations; resumes if OUT holds a checkpoint."""
    from ..store import ActivationStore, capture_to_store
    from ..viz.sae import plot_frontier
    from ..sae.metrics import reconstruction_metrics
    from ..sae.train import SaeTrainConfig, train_sae

    try:
        ks = [int(x) for x in k.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"--k must be an integer or a comma list of integers, got {k!r}", param_hint="--k") from None
    if kind not in ("topk", "batchtopk"):
        raise typer.BadParameter(f"--kind must be topk or batchtopk, got {kind!r}", param_hint="--kind")
    at_least("--width", width, 1)
    for kk in ks or [0]:
        if not 1 <= kk <= width:
            raise typer.BadParameter(f"--k must be in 1..width ({width}), got {kk}", param_hint="--k")
    at_least("--batch-size", batch_size, 1)
    at_least("--steps", steps, 1)
    at_least("--lr", lr, 0)
    at_least("--eval-rows", eval_rows, 1)
    out = out or Path("saes") / f"{site}-{kind}-w{width}"
    if store is None:
        s = load_model(model, device)
        store = out / "acts"
        capture_to_store(s, _texts(texts, column), [site], store, source=str(texts or "pydoc corpus"),
                         progress=not as_json)
    st = ActivationStore(store)
    check_site(site, st.sites)
    results, points = [], []
    for kk in ks:
        cfg = SaeTrainConfig(out=str(out / f"k{kk}" if len(ks) > 1 else out), site=site, k=kk, width=width, kind=kind,
                             batch_size=batch_size, steps=steps, lr=lr, seed=seed)
        sae = train_sae(cfg, st, progress=not as_json)
        m = reconstruction_metrics(sae, st, site, max_rows=eval_rows)
        results.append(dict(k=kk, out=cfg.out, **m._asdict()))
        points.append(dict(k=kk, l0=m.l0, fvu=m.fvu))
    summary = dict(store=str(store), site=site, results=results)
    if len(ks) > 1:
        summary["frontier_png"] = str(plot_frontier(points, out / "frontier.png", title=f"{st.manifest.model} {site}"))
    return Output(summary, outputs={"sae": out})


@command(sae_app, "eval", kind="sae.eval")
def eval_cmd(
    sae_dir: Path = typer.Argument(..., help="SAE directory (ours or SAELens: cfg.json + sae_weights.safetensors)"),
    store: Optional[Path] = typer.Option(None, "--store", help="store for reconstruction metrics"),
    texts: Optional[Path] = typer.Option(None, "--texts", help="texts for the CE-loss view (default: built-in corpus)"),
    column: str = ColumnOpt,
    site: Optional[str] = typer.Option(None, help="site (default: the SAE's own)"),
    rows: int = typer.Option(20000, help="token window for reconstruction metrics and dead fraction"),
    n_texts: int = typer.Option(64, help="texts for the CE-loss view"),
    max_length: int = typer.Option(128, help="tokens per text"),
    model: Optional[str] = ModelOpt,
    device: str = DeviceOpt,
    as_json: bool = JsonOpt,
):
    """L0, FVU, explained variance, cosine, l2 ratio, dead fraction; CE loss clean / SAE / zero, CE recovered, KL."""
    from ..capture import capture
    from ..sae.io import load_sae
    from ..sae.metrics import lm_metrics, reconstruction_metrics
    from ..store import ActivationStore

    at_least("--rows", rows, 1)
    at_least("--n-texts", n_texts, 1)
    at_least("--max-length", max_length, 2)
    sae = load_sae(sae_dir)
    st = ActivationStore(store) if store is not None else None
    site = check_site(sae.cfg.site, st.sites, site) if st is not None else (site or sae.cfg.site)
    if not site:
        raise typer.BadParameter("the SAE does not name its site; pass --site", param_hint="--site")
    if sae.cfg.site and site != sae.cfg.site:
        raise DataError(f"--site {site} differs from the SAE's own site {sae.cfg.site}; drop --site or use a matching SAE")
    if st is not None:
        check_width(sae, site, st.manifest.widths[site], f"store {str(store)!r}")
    s = load_model(model, device)
    site = str(s.site(site))
    check_width(sae, site, s.width(site), s.name)
    data = _texts(texts, column, n_texts)
    if st is not None:
        recon = reconstruction_metrics(sae, st, site, max_rows=rows)
    else:
        acts = capture(s, data, [site], max_length=max_length)
        recon = reconstruction_metrics(sae, acts[site][acts.positions > 0][:rows])
    lm = lm_metrics(s, sae, site, data, max_length=max_length)
    return Output(dict(sae=str(sae_dir), site=site, **recon._asdict(), **lm._asdict()))


@command(sae_app, "pages", kind="sae.pages")
def pages_cmd(
    sae_dir: Path = typer.Argument(..., help="SAE directory (ours or SAELens layout)"),
    store: Path = typer.Option(..., "--store", help="ActivationStore holding the SAE's site (positions=all)"),
    latents: str = typer.Option("0-31", help="latents: '0-31', '3,17,40', or 'top50' (the most active ones)"),
    out: Path = typer.Option(Path("pages"), "--out", help="directory for index.html + feature_<i>.html"),
    rows: int = typer.Option(50000, help="tokens of the store to scan"),
    neuronpedia: Optional[Path] = typer.Option(None, "--neuronpedia", help="also write Neuronpedia batch JSON here"),
    model: Optional[str] = ModelOpt,
    device: str = DeviceOpt,
    as_json: bool = JsonOpt,
):
    """Static HTML feature pages (top contexts by quantile, histogram, logit effects); Neuronpedia export."""
    import torch

    from ..sae.features import neuronpedia_export, sae_cards
    from ..sae.io import load_sae
    from ..store import ActivationStore
    from ..viz.sae_pages import write_pages

    at_least("--rows", rows, 1)
    sae = load_sae(sae_dir)
    st = ActivationStore(store)
    site = check_site(sae.cfg.site, st.sites)
    check_width(sae, site, st.manifest.widths[site], f"store {str(store)!r}")
    acts = st.load(site)
    acts = acts.select(torch.arange(min(rows, len(acts))))
    acts = acts.select(acts.positions > 0)  # position 0: attention sink, ~100x the norm, not a feature
    if latents.startswith("top"):
        try:
            n = int(latents[3:])
        except ValueError:
            raise typer.BadParameter(f"--latents topN needs a number, got {latents!r}", param_hint="--latents") from None
        at_least("--latents topN", n, 1)
        freq = sum((sae.encode(acts[site][i : i + 4096]) > 0).sum(0) for i in range(0, len(acts), 4096))
        chosen = freq.argsort(descending=True)[:n].tolist()
    else:
        chosen = parse_indices(latents, "--latents")
        bad = [i for i in chosen if i >= sae.cfg.width]
        if bad:
            raise typer.BadParameter(f"latents {bad[:5]} out of range: the SAE has {sae.cfg.width}", param_hint="--latents")
    s = load_model(model, device)
    cards = sae_cards(sae, acts, chosen, s, site=site)
    index = write_pages(cards, out, title=f"{sae.cfg.model or s.name} {site} {sae_dir}")
    summary = dict(index=str(index), features=len(cards), site=site, rows=len(acts))
    if neuronpedia is not None:
        layer = int(site.split(".")[1])
        summary["neuronpedia"] = neuronpedia_export(cards, str(neuronpedia), model_id=s.name.lower(), layer=layer,
                                                    sae_set=Path(sae_dir).name)
    return Output(summary, outputs={"pages": out})
