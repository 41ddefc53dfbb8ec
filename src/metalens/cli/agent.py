"""`metalens agent`: an LLM runs experiments on one feature and answers with a scored explanation.

The driving LLM is the local model (tool calls as JSON in its text) or an OpenAI-compatible endpoint
with native tool calls (--endpoint, --endpoint-model). The run directory holds the append-only
transcript; running the same command again resumes it at the next step.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import typer

from .common import DeviceOpt, JsonOpt, ModelOpt, Output, at_least, command, console, current_run, load_model

app = typer.Typer()


def corpus_of(subject, target, store: Optional[Path], texts: Optional[Path], limit: int):
    """Exemplar source: the store (no forward pass), a text file, or the Python reference manual (offline)."""
    from ..agent.targets import store_corpus
    from ..io import pydoc_texts

    if store is not None:
        return store_corpus(store, target, subject.tokenizer)
    if texts is not None:
        from .common import read_texts

        return read_texts(texts, limit=limit)
    return pydoc_texts()[:limit]


@command(app, "agent", kind="agent")
def agent(
    feature: str = typer.Option(..., "--feature", help="sae:DIR:LATENT | SITE:INDEX (e.g. neurons.5:17) | probe:DIR"),
    store: Optional[Path] = typer.Option(None, "--store", help="activation store holding the feature's site (positions=all)"),
    texts: Optional[Path] = typer.Option(None, "--texts", help="corpus for exemplars instead of a store (.txt/.jsonl/...)"),
    budget: int = typer.Option(30, "--budget", help="tool calls the agent may make"),
    max_tokens: int = typer.Option(200_000, "--max-tokens", help="prompt + completion tokens over the run"),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help="OpenAI-compatible base URL (…/v1) of the driving LLM; default: the local model"),
    endpoint_model: str = typer.Option("default", "--endpoint-model", help="model name sent to the endpoint"),
    timeout: float = typer.Option(120.0, "--timeout", help="seconds to wait for one endpoint response"),
    simulator: str = typer.Option("default", "--simulator", help="default | prompt | URL | adapter dir (scores hypotheses)"),
    explainer: str = typer.Option("default", "--explainer", help="default | prompt | URL | adapter dir (the explain tool)"),
    oracle: str = typer.Option("default", "--oracle", help="default | none | oracle dir (the ask_oracle tool)"),
    out: Optional[Path] = typer.Option(None, "--out", help="run directory (resumes if it holds this run); default runs/agent/<feature>"),
    limit: int = typer.Option(400, "--limit", help="corpus texts read when no store is given"),
    seed: int = typer.Option(0, help="sampling seed"),
    model: Optional[str] = ModelOpt,
    device: str = DeviceOpt,
    as_json: bool = JsonOpt,
):
    """Let an LLM investigate a feature with metalens's tools; prints its explanation and held-out score."""
    from ..agent import AgentConfig, EndpointChat, LocalChat, Toolbox, parse_target, run_agent
    from ..agent.loop import summariser
    from ..autointerp.explainer import explainer_from
    from ..autointerp.llm import EndpointConfig, EndpointLLM
    from ..autointerp.simulator import simulator_from
    from ..results import ResultsDB

    at_least("--budget", budget, 1)
    at_least("--max-tokens", max_tokens, 1)
    at_least("--timeout", timeout, 0.1)
    s = load_model(model, device)
    target = parse_target(feature, s)
    llm = (EndpointChat(EndpointLLM(EndpointConfig(base_url=endpoint, model=endpoint_model, timeout=timeout)))
           if endpoint else LocalChat(s))
    orc = None
    if oracle != "none":
        from ..oracle import Oracle

        orc = lambda: Oracle.load(oracle, model=s.path if model else None, device=device)  # noqa: E731
    with console.status("reading exemplars"):
        box = Toolbox(s, target, corpus_of(s, target, store, texts, limit), simulator_from(simulator, s),
                      explainer_from(explainer, s), orc, summariser(llm))
    out = out or Path("runs") / "agent" / re.sub(r"[^\w.-]+", "_", target.id)
    run = current_run()
    res = run_agent(llm, box, out, AgentConfig(max_calls=budget, max_tokens=max_tokens, seed=seed), ResultsDB(),
                    run.id if run else None)
    f = res.final
    data = {"feature": target.id, "explanation": res.explanation, "source": res.source, "score": res.score,
            "score_reason": f.get("score_reason"), "evidence": f.get("evidence"), "steps": f["steps"],
            "tool_calls": f["tool_calls"], "valid_calls": f["valid_calls"], "tokens": f["tokens"],
            "tool_counts": f["tool_counts"], "llm": f["llm"], "simulator": box.simulator.name, "out": str(out)}

    def human():
        sc = "undefined" if res.score is None else f"{res.score:.3f}"
        console.print(f"[bold]{target.id}[/]: {res.explanation!r} ({res.source}); held-out simulation r {sc}\n"
                      f"{f['tool_calls']} tool calls ({f['valid_calls']} valid), {f['tokens']} tokens; "
                      f"transcript {out / 'transcript.md'}", highlight=False)

    return Output(data, human, {"out": out, "transcript": out / "transcript.md"})
