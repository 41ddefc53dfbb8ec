"""`metalens probe train|eval`: thin commands over metalens.probes."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import DeviceOpt, JsonOpt, ModelOpt, Output, at_least, command, current_run, load_model

app = typer.Typer()
probe_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Linear probes: train, evaluate.")


@command(probe_app, "train", kind="probe.train")
def train_cmd(
    data: Path = typer.Option(..., "--data", help="labelled examples, oracle JSONL format (label = answer == choices[0])"),
    out: Path = typer.Option(..., "--out", help="directory for probe.safetensors + probe.json"),
    site: str = typer.Option("resid.17", "--site", help="where the probe reads, e.g. resid.17"),
    method: str = typer.Option("logreg", "--method", help="logreg | diffmean | pairs"),
    aggregation: str = typer.Option("mean", "--agg", help="mean | max | last over the read span"),
    control: Optional[Path] = typer.Option(None, "--control", help="JSONL of control examples (negatives) to set the threshold"),
    fpr: float = typer.Option(0.01, "--fpr", help="false-positive rate of the threshold on the control examples"),
    name: str = typer.Option("probe", "--name", help="the reading's name"),
    model: Optional[str] = ModelOpt,
    device: str = DeviceOpt,
    as_json: bool = JsonOpt,
):
    """Train a probe on labelled examples; with --control, calibrate its threshold at --fpr."""
    from ..probes import calibrate, evaluate, load_examples, save_probe, score, train_probe

    at_least("--fpr", fpr, 0.0, 0.999)
    ex = load_examples(data)
    ctrl = load_examples(control) if control else None
    s = load_model(model, device)
    p = train_probe(s, ex, site, method, aggregation, name=name)
    if ctrl is not None:
        p = calibrate(p, score(s, p, ctrl), fpr, str(control))
    save_probe(p, out)
    run = current_run()
    report = evaluate(s, p, ex) | {"split": "train", "out": str(out), "run_id": run.id if run else None}
    return Output(report, outputs={"probe": out})


@command(probe_app, "eval", kind="probe.eval")
def eval_cmd(
    probe: str = typer.Argument(..., help="a probe directory or a shipped name (deception)"),
    data: Path = typer.Option(..., "--data", help="labelled examples, oracle JSONL format"),
    model: Optional[str] = ModelOpt,
    device: str = DeviceOpt,
    as_json: bool = JsonOpt,
):
    """AUROC, balanced accuracy and recall at the probe's threshold, per task and overall."""
    from ..probes import evaluate, load_examples, load_probe

    p = load_probe(probe)
    ex = load_examples(data)
    s = load_model(model, device)
    report = evaluate(s, p, ex)

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

    return Output(report, human)
