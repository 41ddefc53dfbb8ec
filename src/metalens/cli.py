"""`metalens ...`: thin commands, each a call into the library. Every command takes --json."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Read what a language model is thinking.")
console = Console(stderr=True)

ModelOpt = typer.Option(None, "--model", "-m", help="local HF model dir; default: SmolLM2-135M-Instruct")
DeviceOpt = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N")
JsonOpt = typer.Option(False, "--json", help="print machine-readable JSON on stdout")


def emit(obj, as_json: bool, human=None) -> None:
    """JSON on stdout for --json, otherwise the human rendering (or pretty JSON)."""
    if as_json:
        sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    elif human is not None:
        human()
    else:
        console.print_json(json.dumps(obj, default=str))


def _load(model: Optional[str], device: str):
    from .models import load_subject

    with console.status(f"loading {model or 'SmolLM2-135M-Instruct'}"):
        return load_subject(model, device=device)


def read_texts(path: Path) -> list[str]:
    """A .txt file (one text per line) or .jsonl ({"text": ...} per line)."""
    if not path.exists():
        raise typer.BadParameter(f"texts file {str(path)!r} does not exist")
    lines = [l for l in path.read_text().splitlines() if l.strip()]
    if path.suffix != ".jsonl":
        return lines
    texts = []
    for i, line in enumerate(lines, 1):
        try:
            texts.append(json.loads(line)["text"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise typer.BadParameter(f"{path}:{i}: expected a JSON object with a 'text' field ({e})") from None
    return texts


@app.command()
def info(model: Optional[str] = ModelOpt, device: str = DeviceOpt, as_json: bool = JsonOpt):
    """Model facts and the sites you can read and write."""
    s = _load(model, device)
    facts = dict(
        name=s.name, path=s.path, model_type=s.model.config.model_type, n_layers=s.n_layers, d_model=s.d_model,
        d_mlp=s.d_mlp, vocab=s.model.config.vocab_size, n_params=sum(p.numel() for p in s.model.parameters()),
        dtype=str(s.dtype).removeprefix("torch."), device=str(s.device), fingerprint=s.fingerprint,
        sites=[f"{k}.0..{k}.{s.n_layers - 1}" for k in ("resid", "attn", "mlp", "neurons")],
    )

    def human():
        t = Table(title=f"metalens: {s.name}", show_header=False)
        for k, v in facts.items():
            t.add_row(k, ", ".join(v) if isinstance(v, list) else str(v))
        Console().print(t)

    emit(facts, as_json, human)


@app.command()
def capture(
    texts: Path = typer.Option(..., "--texts", help=".txt (one per line) or .jsonl with a 'text' field"),
    sites: str = typer.Option(..., "--sites", help="comma-separated, e.g. resid.15,mlp.3"),
    out: Path = typer.Option(..., "--out", help="store directory (resumes if it holds this capture)"),
    model: Optional[str] = ModelOpt,
    device: str = DeviceOpt,
    batch_size: int = typer.Option(16, help="texts per forward pass"),
    max_length: int = typer.Option(128, help="tokens per text (longer texts are truncated)"),
    positions: str = typer.Option("all", help="all | last"),
    dtype: str = typer.Option("float32", help="storage dtype: float32 | bfloat16 | float16"),
    texts_per_shard: int = typer.Option(256, help="texts per shard (the unit of resume)"),
    as_json: bool = JsonOpt,
):
    """Capture activations of texts at sites into an ActivationStore (resumable)."""
    from .results import ResultsDB
    from .store import capture_to_store

    data = read_texts(texts)
    s = _load(model, device)
    site_list = [x.strip() for x in sites.split(",") if x.strip()]
    for x in site_list:
        try:
            s.site(x)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--sites") from None
    config = dict(texts=str(texts), sites=site_list, out=str(out), model=s.name, batch_size=batch_size,
                  max_length=max_length, positions=positions, dtype=dtype)
    db = ResultsDB()
    with db.run("capture", config) as run:
        store = capture_to_store(s, data, site_list, out, source=str(texts), texts_per_shard=texts_per_shard,
                                 batch_size=batch_size, max_length=max_length, positions=positions, dtype=dtype,
                                 progress=not as_json)
        run.outputs["store"] = str(out)
    m = store.manifest
    summary = dict(out=str(out), rows=m.n_rows, texts=m.texts_done, shards=len(m.shards), sites=m.sites,
                   mean_norm={x: round(store.mean_norm(x), 4) for x in m.sites})
    emit(summary, as_json)


@app.command()
def generate(
    prompt: str,
    model: Optional[str] = ModelOpt,
    device: str = DeviceOpt,
    max_new_tokens: int = typer.Option(64, help="tokens to generate"),
    raw: bool = typer.Option(False, "--raw", help="no chat template: continue the text as is"),
    as_json: bool = JsonOpt,
):
    """Chat with the subject model (greedy)."""
    s = _load(model, device)
    reply = s.generate(prompt, max_new_tokens=max_new_tokens, chat=not raw)
    emit(dict(prompt=prompt, reply=reply), as_json, lambda: print(reply))


@app.command()
def demo(as_json: bool = JsonOpt):
    """A short end-to-end run on the default model: load, chat, read, write, store."""
    from .demo import run_demo

    emit(run_demo(quiet=as_json), as_json, lambda: None)


# ---- autointerp (issue 5) -------------------------------------------------------------------------
@app.command()
def serve(
    model: Optional[str] = ModelOpt,
    device: str = DeviceOpt,
    host: str = typer.Option("127.0.0.1", help="bind address (localhost by default; 0.0.0.0 exposes it)"),
    port: int = typer.Option(8000, help="TCP port"),
    max_logprobs: int = typer.Option(20, help="largest top-k logprobs a request may ask for"),
):
    """OpenAI-compatible server (/v1/chat/completions, /v1/completions with echo+logprobs) for a local model."""
    from .autointerp.llm import LocalLLM
    from .autointerp.server import serve as run_server

    s = _load(model, device)
    console.print(f"metalens serve: {s.name} on http://{host}:{port}/v1")
    run_server(LocalLLM(s), host=host, port=port, max_logprobs=max_logprobs)


def parse_features(spec: str) -> list:
    """"neurons.3:77,neurons.3:10-12,resid.5:0" -> [Feature.neuron(...)]: coordinates of a stored site."""
    from .features import Feature

    out = []
    for item in [x.strip() for x in spec.split(",") if x.strip()]:
        site, _, idx = item.rpartition(":")
        try:
            lo, _, hi = idx.partition("-")
            rng = range(int(lo), int(hi or lo) + 1)
        except ValueError:
            rng = None
        if not site or rng is None or not len(rng):
            raise typer.BadParameter(f"feature {item!r}: expected SITE:INDEX or SITE:FIRST-LAST, e.g. neurons.3:77", param_hint="--features")
        out += [Feature.neuron(site, i) for i in rng]
    return out


@app.command()
def explain(
    store: Path = typer.Option(..., "--store", help="activation store (captured with positions=all)"),
    features: str = typer.Option(..., "--features", help="SITE:INDEX[,SITE:FIRST-LAST...], e.g. neurons.3:0-7"),
    k: int = typer.Option(8, "--k", help="explanations sampled per feature (best-of-k on the validation split)"),
    out: Optional[Path] = typer.Option(None, "--out", help="run directory (resumes if it holds this search); default <store>/explain-k<k>"),
    model: Optional[str] = ModelOpt,
    device: str = DeviceOpt,
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help="OpenAI-compatible base URL (…/v1) for explainer and simulator; default: the local model"),
    endpoint_model: str = typer.Option("default", "--endpoint-model", help="model name sent to the endpoint"),
    window: int = typer.Option(32, help="tokens per example window"),
    seed: int = typer.Option(0, help="sampling seed"),
    no_control: bool = typer.Option(False, "--no-control", help="skip the shuffled-explanation control"),
    as_json: bool = JsonOpt,
):
    """Explain features from stored activations: best-of-k search, scored on held-out text (resumable)."""
    from .autointerp.examples import ExampleConfig, feature_sequences, make_examples, make_windows
    from .autointerp.llm import EndpointLLM, LocalLLM
    from .autointerp.search import SearchConfig, run_search, summary
    from .results import ResultsDB
    from .store import ActivationStore, StoreError

    feats = parse_features(features)
    try:
        st = ActivationStore(store)
    except StoreError as e:
        raise typer.BadParameter(str(e), param_hint="--store") from None
    for f in feats:
        if f.site not in st.sites:
            raise typer.BadParameter(f"site {f.site!r} is not in the store; it holds {st.sites}", param_hint="--features")
    s = _load(model, device)
    llm = EndpointLLM(base_url=endpoint, model=endpoint_model) if endpoint else LocalLLM(s)
    ex_cfg = ExampleConfig(window=window, seed=seed)
    cfg = SearchConfig(k=k, seed=seed, control=not no_control, examples=ex_cfg)

    def sets_of(f):
        return lambda: make_examples(make_windows(feature_sequences(st, f, s.tokenizer), window, ex_cfg.min_window), ex_cfg)

    out = out or Path(store) / f"explain-k{k}"
    results = run_search(llm, llm, [(f.id, sets_of(f)) for f in feats], cfg, out, ResultsDB(), progress=not as_json,
                         meta={"store": str(store)})
    rows = [dict(feature=f, explanation=r.get("text"), skipped=r.get("skipped"),
                 simulation=r.get("test", {}).get("simulation", {}).get("all"),
                 control=r.get("control", {}).get("test", {}).get("simulation", {}).get("all")) for f, r in results.items()]

    def human():
        t = Table(title=f"explanations (best of {k}), test-split simulation r vs control")
        for col in ("feature", "explanation", "sim r", "control r"):
            t.add_column(col)
        fmt = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
        for r in rows:
            t.add_row(r["feature"], r["explanation"] or f"({r['skipped']})", fmt(r["simulation"]), fmt(r["control"]))
        Console().print(t)

    emit({"out": str(out), "summary": summary(results), "features": rows}, as_json, human)
# ---- end autointerp -------------------------------------------------------------------------------

# ---- oracle ---------------------------------------------------------------------------------------
from .oracle.cli import ask_cmd as _oracle_ask, oracle_app as _oracle_app  # noqa: E402

app.add_typer(_oracle_app, name="oracle")
app.command("ask")(_oracle_ask)
# ---- end oracle -----------------------------------------------------------------------------------

# ---- probes / monitor -----------------------------------------------------------------------------
from .probe_cmds import monitor_cmd as _monitor, probe_app as _probe_app  # noqa: E402

app.add_typer(_probe_app, name="probe")
app.command("monitor")(_monitor)
# ---- end probes / monitor -------------------------------------------------------------------------

# ---- sae / steer / diff (issue 4) ----------------------------------------------------------------
from .sae.cli import sae_app as _sae_app  # noqa: E402

app.add_typer(_sae_app, name="sae")


@app.command()
def steer(
    prompts: list[str] = typer.Argument(..., help="prompts to generate from, with and without steering"),
    site: str = typer.Option("resid.10", help="site to steer"),
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
    from . import steer as st

    s = _load(model, device)
    if sae_dir is not None:
        from .sae.io import load_sae

        sae = load_sae(sae_dir, device=s.device)
        if latent < 0:
            raise typer.BadParameter("--sae needs --latent N", param_hint="--latent")
        site = sae.cfg.site or site
        info_ = dict(kind="clamp", sae=str(sae_dir), site=site, latent=latent, value=value)
        make = lambda: st.clamp_feature(s, site, sae, latent, value, positions=start)  # noqa: E731
    else:
        pp = list(zip(pos or [], neg or []))
        if pairs is not None:
            pp += [(r["pos"], r["neg"]) for r in map(json.loads, pairs.read_text().splitlines()) if r]
        if not pp or len(pos or []) != len(neg or []):
            raise typer.BadParameter("give as many --pos as --neg prompts (or --pairs FILE)", param_hint="--pos")
        vec = st.contrastive_vector(s, site, pp, method=method, reduce=reduce, chat=not raw)
        info_ = dict(kind="vector", site=vec.site, method=method, n_pairs=vec.n_pairs, agreement=vec.agreement,
                     norm=vec.vector.norm().item(), multiplier=multiplier, start=start)
        make = lambda: st.steer(s, vec, multiplier, start)  # noqa: E731
    rows = st.compare(s, prompts, make, max_new_tokens=max_new_tokens, chat=not raw)

    def human():
        console.print(info_)
        for r in rows:
            console.print(f"[bold]{r['prompt']}[/]\n  plain:   {r['plain']!r}\n  steered: {r['steered']!r}")

    emit(dict(**info_, generations=rows), as_json, human)


@app.command("diff")
def diff_cmd(
    model_b: Optional[str] = typer.Option(None, "--model-b", help="second model: a local HF dir of the same architecture"),
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="or: a LoRA (PEFT) dir applied to --model"),
    demo: bool = typer.Option(False, "--demo", help="or: fine-tune an 'ocean' LoRA (once, into OUT) and diff against it"),
    texts: Optional[Path] = typer.Option(None, "--texts", help="texts both models read (default: chat turns)"),
    site: str = typer.Option("resid.15", help="site read in both models"),
    width: int = typer.Option(2048, help="crosscoder latents"),
    k: int = typer.Option(32, "--k", help="latents per token (BatchTopK)"),
    steps: int = typer.Option(1500, help="crosscoder training steps"),
    top: int = typer.Option(8, help="latents to show per side"),
    out: Path = typer.Option(Path("diff"), "--out", help="directory for the crosscoder, report and LoRA"),
    model: Optional[str] = ModelOpt,
    device: str = DeviceOpt,
    as_json: bool = JsonOpt,
):
    """Model diffing with a BatchTopK crosscoder: latents ranked by relative decoder norm, with top contexts."""
    from dataclasses import asdict

    from . import diff as df
    from .models import load_subject
    from .results import ResultsDB
    from .store import atomic_write_json

    a = _load(model, device)
    if sum(x is not None and x is not False for x in (model_b, adapter, demo or None)) != 1:
        raise typer.BadParameter("give exactly one of --model-b, --adapter, --demo")
    if demo:
        adapter = Path(df.topic_lora(a, str(out / "ocean-lora"), progress=not as_json))
    b = df.with_adapter(a, str(adapter)) if adapter is not None else load_subject(model_b, device=device)
    data = read_texts(texts) if texts is not None else df.demo_texts(a)
    cfg = df.CrosscoderConfig(site=site, width=width, k=k, steps=steps)
    with ResultsDB().run("diff", dict(**asdict(cfg), a=a.name, b=b.name, texts=str(texts))) as run:
        cc, rep = df.diff_models(a, b, data, cfg, progress=not as_json)
        out.mkdir(parents=True, exist_ok=True)
        torch_save = __import__("torch").save
        torch_save(cc.state_dict(), out / "crosscoder.pt")
        slim = dict(site=rep.site, a=a.name, b=b.name, fvu=rep.fvu, counts=rep.counts,
                    a_side=rep.a_side[:top], b_side=rep.b_side[:top], config=asdict(cfg))
        atomic_write_json(out / "report.json", {**slim, "rel_norm": rep.rel_norm, "freq": rep.freq})
        run.outputs["report"] = str(out / "report.json")

    def human():
        console.print(f"crosscoder {site}: FVU {rep.fvu:.3f}; live latents {rep.counts}")
        for side, rows in (("model B only", rep.b_side[:top]), ("model A only", rep.a_side[:top])):
            console.print(f"[bold]{side}[/] (one-sided latents by activation mass, then by relative norm)")
            for r in rows:
                console.print(f"  #{r['latent']} r={r['rel_norm']:.2f} freq={r['freq']:.4f} mass={r['mass']:.4f} "
                              f"logits: {r['top_logits'][:6]}")
                for c in r["contexts"][:3]:
                    console.print(f"      {c[-80:]!r}")

    emit(slim, as_json, human)
# ---- end sae / steer / diff -----------------------------------------------------------------------


if __name__ == "__main__":
    app()
