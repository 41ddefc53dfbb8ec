"""`metalens probe train|eval` and `metalens monitor`: thin commands over metalens.probes and metalens.monitor.

This is the one place that combines a probe, an SAE and the oracle into monitor readers (the
methods themselves never import each other).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

probe_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Linear probes: train, evaluate.")

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


def _emit(obj, as_json: bool, human=None) -> None:
    from .cli import emit

    emit(obj, as_json, human)


def _load(model: Optional[str], device: str):
    from rich.console import Console

    from .models import load_subject

    with Console(stderr=True).status(f"loading {model or 'SmolLM2-135M-Instruct'}"):
        return load_subject(model, device=device)


@probe_app.command("train")
def train_cmd(
    data: Path = typer.Option(..., "--data", help="labelled examples, oracle JSONL format (label = answer == choices[0])"),
    out: Path = typer.Option(..., "--out", help="directory for probe.safetensors + probe.json"),
    site: str = typer.Option("resid.9", "--site", help="where the probe reads, e.g. resid.9"),
    method: str = typer.Option("logreg", "--method", help="logreg | diffmean | pairs"),
    aggregation: str = typer.Option("mean", "--agg", help="mean | max | last over the read span"),
    control: Optional[Path] = typer.Option(None, "--control", help="JSONL of control examples (negatives) to set the threshold"),
    fpr: float = typer.Option(0.01, "--fpr", help="false-positive rate of the threshold on the control examples"),
    name: str = typer.Option("probe", "--name", help="the reading's name"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="local HF model dir; default SmolLM2-135M-Instruct"),
    device: str = typer.Option("auto", "--device"),
    as_json: bool = typer.Option(False, "--json", help="print machine-readable JSON on stdout"),
):
    """Train a probe on labelled examples; with --control, calibrate its threshold at --fpr."""
    from .probes import calibrate, evaluate, load_examples, save_probe, score, train_probe
    from .results import ResultsDB

    ex = load_examples(data)
    ctrl = load_examples(control) if control else None
    s = _load(model, device)
    config = {"data": str(data), "site": site, "method": method, "aggregation": aggregation,
              "control": str(control) if control else None, "fpr": fpr, "name": name, "model": s.name}
    db = ResultsDB()
    with db.run("probe.train", config) as run:
        p = train_probe(s, ex, site, method, aggregation, name=name)
        if ctrl is not None:
            p = calibrate(p, score(s, p, ctrl), fpr, str(control))
        save_probe(p, out)
        run.outputs["probe"] = str(out)
        report = evaluate(s, p, ex) | {"split": "train", "out": str(out), "run_id": run.id}
    _emit(report, as_json)


@probe_app.command("eval")
def eval_cmd(
    probe: str = typer.Argument(..., help="a probe directory or a shipped name (deception)"),
    data: Path = typer.Option(..., "--data", help="labelled examples, oracle JSONL format"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="local HF model dir; default SmolLM2-135M-Instruct"),
    device: str = typer.Option("auto", "--device"),
    as_json: bool = typer.Option(False, "--json", help="print machine-readable JSON on stdout"),
):
    """AUROC, balanced accuracy and recall at the probe's threshold, per task and overall."""
    from .probes import evaluate, load_examples, load_probe
    from .results import ResultsDB

    p = load_probe(probe)
    ex = load_examples(data)
    s = _load(model, device)
    db = ResultsDB()
    with db.run("probe.eval", {"probe": probe, "data": str(data), "model": s.name}) as run:
        report = evaluate(s, p, ex) | {"run_id": run.id}

    def human():
        from rich.console import Console
        from rich.table import Table

        t = Table(title=f"probe {p.name} at {p.site} ({p.method}, {p.aggregation}), threshold {p.threshold}")
        for c in ("task", "n", "AUROC", "bal. acc", "recall", "FPR"):
            t.add_column(c)
        f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        for task, m in [*report["tasks"].items(), ("overall", report["overall"])]:
            t.add_row(task, str(m["n"]), f(m["auroc"]), f(m.get("balanced_accuracy")), f(m.get("recall")), f(m.get("fpr")))
        Console().print(t)

    _emit(report, as_json, human)


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
    from .capture import capture
    from .monitor import TopLatents, latent_quantiles
    from .sae.io import load_sae

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
    from .oracle import Oracle

    o = Oracle.load("default", device=device)
    tok = o.subject.tokenizer

    def fn(ids: list[int]) -> dict[str, float]:
        a = o.ask(tok.decode(ids), question, read="all", choices=["Yes", "No"], max_new_tokens=1)
        return {"oracle": a.probs["Yes"]}

    return fn


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
    model: Optional[str] = typer.Option(None, "--model", "-m", help="local HF model dir; default SmolLM2-135M-Instruct"),
    device: str = typer.Option("auto", "--device"),
    as_json: bool = typer.Option(False, "--json", help="one JSON line per token"),
):
    """Generate with live readings: probes, top SAE latents, an oracle question every N tokens."""
    from rich.console import Console
    from rich.text import Text

    from .monitor import record, watch
    from .probes import load_probe
    from .results import ResultsDB

    s = _load(model, device)
    readers = [load_probe(p) if raw else RunningScore(load_probe(p)) for p in probe]
    if sae is not None:
        readers.append(sae_reader(sae, top_k, reference, s))
    oracle_fn = oracle_reader(oracle_question, device) if oracle_question else None
    config = {"prompt": prompt, "probes": probe, "raw": raw, "sae": str(sae) if sae else None, "oracle_question": oracle_question,
              "every": every, "abort_on": abort_on, "max_new_tokens": max_new_tokens, "model": s.name}
    db, con, out = ResultsDB(), Console(), []
    main = readers[0].name if probe else None
    with db.run("monitor", config) as run:
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
                style = "bold white on red" if r.flags else ("on dark_red" if near else "")
                con.print(Text(r.token, style=style), end="")
        finally:
            record(db, run.id, out)
    if not as_json:
        con.print()
        flagged = [f"{r.position}:{r.token!r} {r.flags}" for r in out if r.flags]
        con.print(f"[dim]{len(out)} tokens, {len(flagged)} flagged; run {run.id}[/]")
        for f in flagged[:20]:
            con.print(f"  [red]{f}")
