"""`metalens steer` and `metalens diff`: steering vectors, feature clamping, crosscoder model diffing."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import DataError
from .common import (ColumnOpt, DeviceOpt, JsonOpt, ModelOpt, Output, at_least, command, console, finite, load_model,
                     read_texts)

from ..diff import CrosscoderConfig

_C = CrosscoderConfig()  # the defaults of `diff` are the config's

app = typer.Typer()


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """(pos, neg) prompt pairs from a JSONL file of {"pos": ..., "neg": ...}; errors name file:line."""
    from ..io import jsonl_objects

    pairs = []
    for where, obj in jsonl_objects(path):
        if not isinstance(obj.get("pos"), str) or not isinstance(obj.get("neg"), str):
            raise DataError(f"{where}: expected {{\"pos\": str, \"neg\": str}}, got fields {sorted(obj)}")
        pairs.append((obj["pos"], obj["neg"]))
    return pairs


@command(app, "steer")
def steer(
    prompts: list[str] = typer.Argument(..., help="prompts to generate from, with and without steering"),
    site: Optional[str] = typer.Option(None, help="site to steer (default resid.10; with --sae: the SAE's own)"),
    pos: Optional[list[str]] = typer.Option(None, "--pos", help="positive prompt (repeat; paired with --neg)"),
    neg: Optional[list[str]] = typer.Option(None, "--neg", help="negative prompt (repeat)"),
    pairs: Optional[Path] = typer.Option(None, "--pairs", help='.jsonl of {"pos": ..., "neg": ...}'),
    method: str = typer.Option("mean", help="mean (difference of means) | pca (of the differences)"),
    reduce: str = typer.Option("last", help="per prompt: last token | mean over tokens"),
    multiplier: float = typer.Option(4.0, help="scale of the steering vector"),
    start: Optional[int] = typer.Option(None, help="steer token positions >= START (default: all)"),
    sae_dir: Optional[Path] = typer.Option(None, "--sae", help="instead: clamp a latent of this SAE"),
    latent: int = typer.Option(-1, help="SAE latent to clamp (with --sae)"),
    value: float = typer.Option(10.0, help="value to clamp the latent to (the SAE error term is kept)"),
    max_new_tokens: int = typer.Option(40, help="tokens to generate"),
    raw: bool = typer.Option(False, "--raw", help="no chat template"),
    model: Optional[str] = ModelOpt,
    device: str = DeviceOpt,
    as_json: bool = JsonOpt,
):
    """Generate with and without a contrastive steering vector or a clamped SAE feature."""
    from .. import steer as st

    at_least("--max-new-tokens", max_new_tokens, 1)
    finite("--multiplier", multiplier)
    finite("--value", value)
    if start is not None:
        at_least("--start", start, 0)
    if method not in ("mean", "pca"):
        raise typer.BadParameter(f"--method must be mean or pca, got {method!r}", param_hint="--method")
    if reduce not in ("last", "mean"):
        raise typer.BadParameter(f"--reduce must be last or mean, got {reduce!r}", param_hint="--reduce")
    s = load_model(model, device)
    if sae_dir is not None:
        from ..sae.io import load_sae

        sae = load_sae(sae_dir, device=s.device)
        if not 0 <= latent < sae.cfg.width:
            raise typer.BadParameter(f"--sae needs --latent in 0..{sae.cfg.width - 1}, got {latent}", param_hint="--latent")
        own = str(s.site(sae.cfg.site)) if sae.cfg.site else None
        if own and site and str(s.site(site)) != own:
            raise DataError(f"--site {site} differs from the SAE's own site {own}; drop --site or use a matching SAE")
        site = own or site
        if not site:
            raise DataError("the SAE does not name its site; pass --site")
        if sae.cfg.d_in != s.width(site):
            raise DataError(f"the SAE reads width {sae.cfg.d_in} but {site} of {s.name} has width {s.width(site)}")
        info = dict(kind="clamp", sae=str(sae_dir), site=site, latent=latent, value=value)
        make = lambda: st.clamp_feature(s, site, sae, latent, value, positions=start)  # noqa: E731
    else:
        site = site or "resid.10"
        if len(pos or []) != len(neg or []):
            raise typer.BadParameter("give as many --pos as --neg prompts (or --pairs FILE)", param_hint="--pos")
        pp = list(zip(pos or [], neg or [])) + (read_pairs(pairs) if pairs is not None else [])
        if not pp:
            raise typer.BadParameter("give --pos/--neg prompts or --pairs FILE", param_hint="--pos")
        vec = st.contrastive_vector(s, site, pp, method=method, reduce=reduce, chat=not raw)
        info = dict(kind="vector", site=vec.site, method=method, n_pairs=vec.n_pairs, agreement=vec.agreement,
                    norm=vec.vector.norm().item(), multiplier=multiplier, start=start)
        make = lambda: st.steer(s, vec, multiplier, start)  # noqa: E731
    rows = st.compare(s, prompts, make, max_new_tokens=max_new_tokens, chat=not raw)

    def human():
        console.print(info)
        for r in rows:
            console.print(f"[bold]{r['prompt']}[/]\n  plain:   {r['plain']!r}\n  steered: {r['steered']!r}")

    return Output(dict(**info, generations=rows), human)


@command(app, "diff")
def diff_cmd(
    model_b: Optional[str] = typer.Option(None, "--model-b", help="second model: a local HF dir of the same architecture"),
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="or: a LoRA (PEFT) dir applied to --model"),
    demo: bool = typer.Option(False, "--demo", help="or: fine-tune an 'ocean' LoRA (once, into OUT) and diff against it"),
    texts: Optional[Path] = typer.Option(None, "--texts", help="texts both models read (default: chat turns)"),
    column: str = ColumnOpt,
    site: str = typer.Option(_C.site, help="site read in both models"),
    width: int = typer.Option(_C.width, help="crosscoder latents"),
    k: int = typer.Option(_C.k, "--k", help="latents per token (BatchTopK)"),
    steps: int = typer.Option(_C.steps, help="crosscoder training steps"),
    top: int = typer.Option(8, help="latents to show per side"),
    out: Path = typer.Option(Path("diff"), "--out", help="directory for the crosscoder, report and LoRA"),
    model: Optional[str] = ModelOpt,
    device: str = DeviceOpt,
    as_json: bool = JsonOpt,
):
    """Model diffing with a BatchTopK crosscoder: latents ranked by relative decoder norm, with top contexts."""
    from dataclasses import asdict

    from safetensors.torch import save_file

    from .. import diff as df
    from ..adapters import with_adapter
    from ..io import atomic_write_json
    from ..models import load_subject

    at_least("--width", width, 1)
    at_least("--steps", steps, 1)
    at_least("--top", top, 1)
    if not 1 <= k <= width:
        raise typer.BadParameter(f"--k must be in 1..width ({width}), got {k}", param_hint="--k")
    if sum(x is not None and x is not False for x in (model_b, adapter, demo or None)) != 1:
        raise typer.BadParameter("give exactly one of --model-b, --adapter, --demo")
    a = load_model(model, device)
    if demo:
        adapter = Path(df.topic_lora(a, str(out / "ocean-lora"), progress=not as_json))
    b = with_adapter(a, str(adapter)) if adapter is not None else load_subject(model_b, device=device)
    data = read_texts(texts, column) if texts is not None else df.demo_texts(a)
    cfg = df.CrosscoderConfig(site=site, width=width, k=k, steps=steps)
    cc, rep = df.diff_models(a, b, data, cfg, progress=not as_json)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k_: v.contiguous() for k_, v in cc.state_dict().items()}, str(out / "crosscoder.safetensors"))
    slim = dict(site=rep.site, a=a.name, b=b.name, fvu=rep.fvu, counts=rep.counts,
                a_side=rep.a_side[:top], b_side=rep.b_side[:top], config=asdict(cfg))
    atomic_write_json(out / "report.json", {**slim, "rel_norm": rep.rel_norm, "freq": rep.freq})

    def human():
        console.print(f"crosscoder {site}: FVU {rep.fvu:.3f}; live latents {rep.counts}")
        for side, rows in (("model B only", rep.b_side[:top]), ("model A only", rep.a_side[:top])):
            console.print(f"[bold]{side}[/] (one-sided latents by activation mass, then by relative norm)")
            for r in rows:
                console.print(f"  #{r['latent']} r={r['rel_norm']:.2f} freq={r['freq']:.4f} mass={r['mass']:.4f} "
                              f"logits: {r['top_logits'][:6]}")
                for c in r["contexts"][:3]:
                    console.print(f"      {c[-80:]!r}")

    return Output(slim, human, {"report": out / "report.json", "crosscoder": out / "crosscoder.safetensors"})
