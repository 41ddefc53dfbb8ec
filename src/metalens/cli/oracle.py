"""`metalens oracle train|eval|personaqa` and `metalens ask`: thin commands over the oracle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .common import DeviceOpt, JsonOpt, ModelOpt, Output, at_least, command, current_run

app = typer.Typer()
oracle_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Activation oracles: train, evaluate.")


@command(oracle_app, "train", kind="oracle.train")
def train_cmd(
    out: Path = typer.Option(None, "--out", help="run directory (config, data, checkpoints, curves)"),
    recipe: str = typer.Option("default", "--recipe", help="default | diverse (stage 2: --set init_adapter=...) | tiny"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue the run in this directory"),
    data: Optional[Path] = typer.Option(None, "--data", help="training data dir (Activation Oracles layout); default $METALENS_AO_DATA"),
    model: Optional[str] = ModelOpt,
    minutes: float = typer.Option(0.0, "--minutes", help="stop this session after N minutes (0 = no limit)"),
    max_steps: int = typer.Option(0, "--max-steps", help="total optimizer steps (0 = the recipe's)"),
    lr: float = typer.Option(0.0, "--lr", help="learning rate (0 = the recipe's)"),
    set_: list[str] = typer.Option([], "--set", help="override any config field: --set lora_r=32 (JSON values)"),
    as_json: bool = JsonOpt,
):
    """Train an oracle (LoRA on the subject), checkpointing often; --resume DIR continues one."""
    from dataclasses import asdict, replace

    from ..oracle.train import RECIPES, OracleConfig, train

    at_least("--minutes", minutes, 0)
    at_least("--max-steps", max_steps, 0)
    at_least("--lr", lr, 0)
    if resume is not None:
        ckpt = train(OracleConfig(minutes=minutes, max_steps=max_steps), resume, resume=True, progress=not as_json)
        return Output({"out": str(resume), "ckpt": str(ckpt)}, outputs={"ckpt": ckpt})
    if out is None:
        raise typer.BadParameter("give --out DIR for a new run, or --resume DIR", param_hint="--out")
    if recipe not in RECIPES:
        raise typer.BadParameter(f"unknown recipe {recipe!r}; known: {sorted(RECIPES)}", param_hint="--recipe")
    cfg = RECIPES[recipe]
    changes = {k: v for k, v in dict(data_dir=str(data) if data else None, model=model, minutes=minutes or None,
                                      max_steps=max_steps or None, lr=lr or None).items() if v is not None}
    for item in set_:
        key, _, val = item.partition("=")
        if key not in asdict(cfg):
            raise typer.BadParameter(f"unknown config field {key!r}; fields: {sorted(asdict(cfg))}", param_hint="--set")
        try:
            changes[key] = json.loads(val)
        except json.JSONDecodeError:
            changes[key] = val
    cfg = OracleConfig.from_json({**asdict(replace(cfg)), **changes})
    ckpt = train(cfg, out, progress=not as_json)
    return Output({"out": str(out), "ckpt": str(ckpt), "config": asdict(cfg)}, outputs={"ckpt": ckpt})


@command(oracle_app, "eval", kind="oracle.eval")
def eval_cmd(
    data: Path = typer.Option(..., "--data", help="JSONL of examples with choices (see metalens.oracle.tasks)"),
    oracle: str = typer.Option("default", "--oracle", help="'default', an adapter dir, or a run dir"),
    baselines: str = typer.Option("untrained,probe,blackbox,text", "--baselines",
                                  help="comma-separated: untrained, probe, blackbox, text (or 'none')"),
    layer: Optional[int] = typer.Option(None, "--layer", help="read layer (default: the oracle's; negative counts from the end)"),
    probe_train: Optional[Path] = typer.Option(None, "--probe-train", help="JSONL the probe trains on (else 5-fold CV)"),
    limit: int = typer.Option(0, "--limit", help="use only the first N examples (0 = all)"),
    out: Optional[Path] = typer.Option(None, "--out", help="also write the JSON report here"),
    device: str = DeviceOpt,
    as_json: bool = JsonOpt,
):
    """AUROC of P(first choice) and accuracy per task, the oracle against the baselines."""
    from ..io import atomic_write_json
    from ..oracle.ask import Oracle
    from ..oracle.evaluate import BASELINES, evaluate, render
    from ..oracle.tasks import load_jsonl

    at_least("--limit", limit, 0)
    names = [] if baselines.strip() in ("", "none") else [b.strip() for b in baselines.split(",")]
    for b in names:
        if b not in BASELINES:
            raise typer.BadParameter(f"unknown baseline {b!r}; known: {', '.join(BASELINES)} or 'none'",
                                     param_hint="--baselines")
    exs = load_jsonl(data)[: limit or None]
    o = Oracle.load(oracle, device=device)
    report = evaluate(o, exs, names, layer=layer, probe_train=load_jsonl(probe_train) if probe_train else None)
    report["data"], report["oracle"] = str(data), oracle
    if out is not None:
        atomic_write_json(out, report)
    return Output(report, lambda: render(report), {"report": out} if out else None)


@command(oracle_app, "personaqa", kind="oracle.personaqa")
def personaqa_cmd(
    data: Path = typer.Option(..., "--data", help="personaqa dir holding {variant}/personas.jsonl (AO layout)"),
    variants: str = typer.Option("base,shuffled,fantasy", "--variants", help="comma-separated subdirectories"),
    n: int = typer.Option(30, "--n", help="personas per variant"),
    epochs: int = typer.Option(12, "--epochs", help="fine-tuning epochs over the fact sentences"),
    choices: int = typer.Option(4, "--choices", help="answer options per question (chance = 1/choices)"),
    oracle: str = typer.Option("default", "--oracle", help="'default', an adapter dir, or a run dir"),
    out: Path = typer.Option(Path("runs/personaqa"), "--out", help="fine-tuned adapters (reused) and report.json"),
    as_json: bool = JsonOpt,
):
    """PersonaQA: fine-tune copies of the subject on persona facts; can the oracle read them from the name?"""
    from ..io import atomic_write_json
    from ..models import load_subject
    from ..oracle.ask import Oracle
    from ..oracle.personaqa import evaluate_personaqa, finetune_on_facts, load_personas

    at_least("--n", n, 1)
    at_least("--epochs", epochs, 1)
    at_least("--choices", choices, 2)
    o = Oracle.load(oracle)
    plain = load_subject(o.settings.model, device=str(o.subject.device))  # fine-tuned, never the oracle's copy
    report = dict(oracle=oracle, n=n, epochs=epochs, choices=choices, variants={})
    for v in [x.strip() for x in variants.split(",") if x.strip()]:
        personas = load_personas(data / v, n)
        tuned = finetune_on_facts(plain, personas, out / f"{v}-lora", epochs=epochs, progress=not as_json)
        report["variants"][v] = evaluate_personaqa(o, tuned, personas, n_choices=choices)
        del tuned
        atomic_write_json(out / "report.json", report)

    def human():
        print(f"{'variant':10s} {'n':>4s} {'chance':>7s} {'cloze':>6s} {'subject':>8s} {'oracle':>7s} {'base':>6s}")
        for v, r in report["variants"].items():
            print(f"{v:10s} {r['n']:4d} {r['chance']:7.2f} {r['cloze']:6.2f} {r['subject']:8.2f} {r['oracle']:7.2f} "
                  f"{r['base']:6.2f}")

    return Output(report, human, {"report": out / "report.json"})


def parse_read(read: str):
    """--read: 'all' | 'last' | 'START:END' (Python slice of the context's tokens)."""
    if read in ("all", "last"):
        return read
    a, colon, b = read.partition(":")
    try:
        if not colon:
            raise ValueError
        return [int(a) if a else 0, int(b) if b else None]
    except ValueError:
        raise typer.BadParameter(f"--read must be all, last or START:END, got {read!r}", param_hint="--read") from None


@command(app, "ask", kind="oracle.ask")
def ask_cmd(
    context: str = typer.Argument(..., help="the text the subject reads"),
    question: str = typer.Argument(..., help="the question for the oracle"),
    layer: Optional[int] = typer.Option(None, "--layer", help="read layer (default: the oracle's; negative counts from the end)"),
    read: str = typer.Option("all", "--read", help="all | last | START:END (token slice)"),
    choices: Optional[str] = typer.Option(None, "--choices", help="comma-separated, at least two, e.g. Yes,No"),
    oracle: str = typer.Option("default", "--oracle", help="'default', an adapter dir, or a run dir"),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="tokens of the free-text answer"),
    device: str = DeviceOpt,
    as_json: bool = JsonOpt,
):
    """Ask the activation oracle a question about the subject's activations on a context."""
    from ..oracle.ask import Oracle
    from ..results import ResultsDB

    at_least("--max-new-tokens", max_new_tokens, 1)
    if not context.strip():
        raise typer.BadParameter("the context is empty: give the text the subject should read", param_hint="CONTEXT")
    choice_list = [c for c in (choices.split(",") if choices else []) if c.strip()]
    if choices is not None and len(choice_list) < 2:
        raise typer.BadParameter(f"--choices needs at least two options, got {choices!r}", param_hint="--choices")
    o = Oracle.load(oracle, device=device)
    ans = o.ask(context, question, layer=layer, read=parse_read(read), choices=choice_list or None,
                max_new_tokens=max_new_tokens)
    run = current_run()
    ResultsDB().add_oracle_answer(run.id if run else None, context, question, ans.text, ans.probs or None, task="ask")
    res = {"context": context, "question": question, **ans.to_json()}
    return Output(res, lambda: print(ans.text + (f"  {ans.probs}" if ans.probs else "")))
