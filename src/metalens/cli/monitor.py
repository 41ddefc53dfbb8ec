"""`metalens monitor "prompt"`: generation with live readings (probes, top SAE latents, the oracle).

The one place that combines a probe, an SAE and the oracle into monitor readers (the methods
themselves never import each other).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from .common import DeviceOpt, ModelOpt, Output, at_least, command, current_run, load_model

app = typer.Typer()

REFERENCE_TEXTS = [
    "The weather was nice today, so we walked along the river for an hour.",
    "Can you help me write an email to my landlord about the broken heater?",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "I think the best way to learn a language is to speak it every day.",
    "The meeting has been moved to Thursday at three in the afternoon.",
    "Here is a simple recipe for pancakes: flour, milk, eggs and a pinch of salt.",
    "The Roman Empire lasted for centuries and left roads all over Europe.",
    "To sort a list in Python, call sorted() or the list's sort() method.",
    "She played the violin at the concert and everyone applauded.",
    "Sure! Here are three tips for sleeping better: keep a schedule, avoid screens, and exercise.",
    "The stock market fell sharply after the announcement on Monday.",
    "My cat likes to sleep on the warm windowsill in the afternoon.",
]


class RunningScore:
    """A probe's score of the reply so far (running mean / max / last of its token readings).

    Its threshold was calibrated on whole replies' scores, so this is the reading it applies to.
    """

    def __init__(self, probe):
        self.probe, self.name, self.site, self.threshold = probe, probe.name, probe.site, probe.threshold
        self.total, self.count, self.best = 0.0, 0, float("-inf")

    def __call__(self, acts):  # [1, d] -> [1]
        v = self.probe(acts)
        self.total, self.count, self.best = self.total + float(v.sum()), self.count + len(v), max(self.best, float(v.max()))
        how = self.probe.aggregation
        return v.new_tensor([self.total / self.count if how == "mean" else self.best if how == "max" else float(v[-1])])


def sae_reader(path: Path, k: int, reference: Optional[Path], subject):
    """Top-k SAE latents at each token, each as a quantile rank of its own activations on reference texts."""
    from ..capture import capture
    from ..monitor import TopLatents, latent_quantiles
    from ..sae.io import load_sae

    sae = load_sae(path).eval()
    site = sae.cfg.site
    if not site:
        raise typer.BadParameter(f"the SAE in {path} names no site in its config; it cannot be placed in the model")
    texts = REFERENCE_TEXTS if reference is None else [t for t in reference.read_text().splitlines() if t.strip()]
    texts = [subject.chat(t) for t in texts]
    ref = capture(subject, texts, site, add_special_tokens=False, progress=False)[site]
    import torch

    with torch.no_grad():
        enc = lambda a: sae.encode(a)  # noqa: E731
        q = latent_quantiles(enc, ref)
    return TopLatents(f"sae@{site}", site, enc, q, k=k)


def oracle_reader(question: str, device: str):
    """oracle_fn for watch(): P(Yes) of the shipped oracle asked `question` about the text so far."""
    from ..oracle import Oracle

    o = Oracle.load("default", device=device)
    tok = o.subject.tokenizer

    def fn(ids: list[int]) -> dict[str, float]:
        a = o.ask(tok.decode(ids), question, read="all", choices=["Yes", "No"], max_new_tokens=1)
        return {"oracle": a.probs["Yes"]}

    return fn


@command(app, "monitor")
def monitor_cmd(
    prompt: str = typer.Argument(..., help="the user message (chat template applied)"),
    probe: list[str] = typer.Option([], "--probe", help="probe directory or shipped name (repeatable)"),
    sae: Optional[Path] = typer.Option(None, "--sae", help="SAE directory: report its top latents per token"),
    top_k: int = typer.Option(5, "--top-k", help="SAE latents reported per token"),
    reference: Optional[Path] = typer.Option(None, "--reference", help="texts (one per line) for the SAE quantiles"),
    oracle_question: Optional[str] = typer.Option(None, "--oracle-question", help="ask the shipped oracle every N tokens"),
    every: int = typer.Option(8, "--every", help="tokens between oracle questions"),
    abort_on: list[str] = typer.Option([], "--abort-on", help="stop generating when this reading flags (repeatable)"),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens"),
    raw: bool = typer.Option(False, "--raw", help="probe readings per token, not the running score of the reply"),
    model: Optional[str] = ModelOpt,
    device: str = DeviceOpt,
    as_json: bool = typer.Option(False, "--json", help="one JSON line per token"),
):
    """Generate with live readings: probes, top SAE latents, an oracle question every N tokens."""
    from rich.console import Console
    from rich.text import Text

    from ..monitor import record, watch
    from ..probes import load_probe
    from ..results import ResultsDB

    at_least("--every", every, 1)
    at_least("--max-new-tokens", max_new_tokens, 1)
    s = load_model(model, device)
    readers = [load_probe(p) if raw else RunningScore(load_probe(p)) for p in probe]
    if sae is not None:
        readers.append(sae_reader(sae, top_k, reference, s))
    oracle_fn = oracle_reader(oracle_question, device) if oracle_question else None
    con, out = Console(), []
    main = readers[0].name if probe else None
    run = current_run()
    try:
        for r in watch(s, prompt, readers, max_new_tokens, abort_on=abort_on, oracle_fn=oracle_fn, every=every):
            out.append(r)
            if as_json:
                sys.stdout.write(json.dumps(r._asdict()) + "\n")
                sys.stdout.flush()
                continue
            v = r.readings.get(main) if main else None
            thr = readers[0].threshold if main else None
            near = v is not None and thr is not None and v > thr - 1  # within one unit (a logit for logreg)
            con.print(Text(r.token, style="bold white on red" if r.flags else ("on dark_red" if near else "")), end="")
    finally:
        if run is not None:
            db = ResultsDB()
            record(db, run.id, out)
            db.close()
    if as_json:
        return None

    def human():
        con.print()
        flagged = [f"{r.position}:{r.token!r} {r.flags}" for r in out if r.flags]
        con.print(f"[dim]{len(out)} tokens, {len(flagged)} flagged; run {run.id if run else '-'}[/]")
        for f in flagged[:20]:
            con.print(f"  [red]{f}")

    return Output({"tokens": len(out)}, human)
