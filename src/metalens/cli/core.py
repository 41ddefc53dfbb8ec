"""`metalens info|capture|generate|demo|serve`: the core commands."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .common import ColumnOpt, DeviceOpt, JsonOpt, ModelOpt, Output, at_least, command, console, load_model, read_texts

app = typer.Typer()


@command(app, "info", record=False)
def info(model: Optional[str] = ModelOpt, device: str = DeviceOpt, as_json: bool = JsonOpt):
    """Model facts and the sites you can read and write."""
    s = load_model(model, device)
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

    return Output(facts, human)


@command(app, "capture")
def capture(
    texts: Path = typer.Option(..., "--texts", help="texts: .txt (one per line), .jsonl, parquet/arrow/json, a saved HF dataset"),
    sites: str = typer.Option(..., "--sites", help="comma-separated, e.g. resid.15,mlp.3"),
    out: Path = typer.Option(..., "--out", help="store directory (resumes if it holds this capture)"),
    model: Optional[str] = ModelOpt,
    device: str = DeviceOpt,
    column: str = ColumnOpt,
    limit: int = typer.Option(0, "--limit", help="read only the first N lines / rows (0 = all)"),
    batch_size: int = typer.Option(16, help="texts per forward pass"),
    max_length: int = typer.Option(128, help="tokens per text (longer texts are truncated)"),
    positions: str = typer.Option("all", help="all | last"),
    dtype: str = typer.Option("float32", help="storage dtype: float32 | bfloat16 | float16"),
    texts_per_shard: int = typer.Option(256, help="texts per shard (the unit of resume)"),
    repair: bool = typer.Option(False, "--repair", help="drop the first bad shard of OUT and every later one, then "
                                "capture their texts again"),
    as_json: bool = JsonOpt,
):
    """Capture activations of texts at sites into an ActivationStore (resumable).

    Blank lines are kept as empty texts that produce no rows, so a row's text index + 1 is its line."""
    from ..store import DTYPES, capture_to_store

    at_least("--batch-size", batch_size, 1)
    at_least("--max-length", max_length, 1)
    at_least("--texts-per-shard", texts_per_shard, 1)
    at_least("--limit", limit, 0)
    if positions not in ("all", "last"):
        raise typer.BadParameter(f"--positions must be all or last, got {positions!r}", param_hint="--positions")
    if dtype not in DTYPES:
        raise typer.BadParameter(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}", param_hint="--dtype")
    data = read_texts(texts, column, limit or None, keep_blank=True)
    site_list = [x.strip() for x in sites.split(",") if x.strip()]
    if not site_list:
        raise typer.BadParameter(f"--sites names no site: {sites!r}; e.g. resid.3,mlp.5", param_hint="--sites")
    s = load_model(model, device)
    for x in site_list:
        s.site(x)  # a SiteError names the valid sites
    store = capture_to_store(s, data, site_list, out, source=str(texts), texts_per_shard=texts_per_shard,
                             batch_size=batch_size, max_length=max_length, positions=positions, dtype=dtype,
                             progress=not as_json, repair=repair)
    m = store.manifest
    summary = dict(out=str(out), rows=m.n_rows, texts=m.texts_done, shards=len(m.shards), sites=m.sites,
                   mean_norm={x: round(store.mean_norm(x), 4) for x in m.sites})
    return Output(summary, outputs={"store": out})


@command(app, "generate")
def generate(
    prompt: str,
    model: Optional[str] = ModelOpt,
    device: str = DeviceOpt,
    max_new_tokens: int = typer.Option(64, help="tokens to generate"),
    raw: bool = typer.Option(False, "--raw", help="no chat template: continue the text as is"),
    as_json: bool = JsonOpt,
):
    """Chat with the subject model (greedy)."""
    at_least("--max-new-tokens", max_new_tokens, 1)
    s = load_model(model, device)
    reply = s.generate(prompt, max_new_tokens=max_new_tokens, chat=not raw)
    return Output(dict(prompt=prompt, reply=reply), lambda: print(reply))


@command(app, "demo")
def demo(as_json: bool = JsonOpt):
    """A short end-to-end run on the default model: load, chat, read, write, store, oracle, autointerp, SAE."""
    from ..demo import run_demo

    return Output(run_demo(quiet=as_json), lambda: None)


@command(app, "serve", record=False)
def serve(
    model: Optional[str] = ModelOpt,
    device: str = DeviceOpt,
    host: str = typer.Option("127.0.0.1", help="bind address (localhost by default; 0.0.0.0 exposes it)"),
    port: int = typer.Option(8000, help="TCP port"),
    max_logprobs: int = typer.Option(20, help="largest top-k logprobs a request may ask for"),
):
    """OpenAI-compatible server (/v1/chat/completions, /v1/completions with echo+logprobs) for a local model."""
    from ..autointerp.llm import LocalLLM
    from ..autointerp.server import serve as run_server

    if host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]warning[/]: binding {host}: anyone who can reach this machine can use the model")
    at_least("--port", port, 1, 65535)
    at_least("--max-logprobs", max_logprobs, 0)
    s = load_model(model, device)
    console.print(f"metalens serve: {s.name} on http://{host}:{port}/v1")
    run_server(LocalLLM(s), host=host, port=port, max_logprobs=max_logprobs)


