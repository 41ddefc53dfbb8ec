"""`metalens explain` and `metalens simulate`: explanations of features, searched for and scored.

Both take `--simulator default|prompt|URL|DIR` and explain takes `--explainer default|prompt|URL|DIR`:
default is the shipped trained adapter (autointerp/default/) when it was trained on the loaded model,
else the prompted one; prompt is the prompted local model; a URL an OpenAI-compatible endpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .common import DeviceOpt, JsonOpt, ModelOpt, Output, at_least, command, load_model

from ..autointerp.examples import ExampleConfig
from ..autointerp.search import SearchConfig  # the defaults of `explain` are the configs'

app = typer.Typer()


def parse_features(spec: str) -> list:
    """"neurons.3:77,neurons.3:10-12,resid.5:0" -> [Feature.neuron(...)]: coordinates of a stored site."""
    from ..features import Feature
    from .common import parse_indices

    out = []
    for item in [x.strip() for x in spec.split(",") if x.strip()]:
        site, _, idx = item.rpartition(":")
        if not site:
            raise typer.BadParameter(f"feature {item!r}: expected SITE:INDEX or SITE:FIRST-LAST, e.g. neurons.3:77",
                                     param_hint="--features")
        out += [Feature.neuron(site, i) for i in parse_indices(idx, f"feature {item!r}")]
    return out


@command(app, "explain", kind="autointerp.explain")
def explain(
    store: Optional[Path] = typer.Option(None, "--store", help="activation store (captured with positions=all)"),
    features: Optional[str] = typer.Option(None, "--features", help="SITE:INDEX[,SITE:FIRST-LAST...], e.g. neurons.3:0-7"),
    windows: Optional[Path] = typer.Option(None, "--windows", help='instead of a store: .jsonl of {"id", "windows": [{"tokens", "values"}]}'),
    simulator: str = typer.Option("default", "--simulator", help="default | prompt | URL | adapter dir"),
    explainer: str = typer.Option("default", "--explainer", help="default | prompt | URL | adapter dir"),
    k: int = typer.Option(SearchConfig.k, "--k", help="explanations sampled per feature (best-of-k on the validation split)"),
    out: Optional[Path] = typer.Option(None, "--out", help="run directory (resumes if it holds this search); default <store>/explain-k<k>"),
    model: Optional[str] = ModelOpt,
    device: str = DeviceOpt,
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help="OpenAI-compatible base URL (…/v1) for explainer and simulator; default: the local model"),
    endpoint_model: str = typer.Option("default", "--endpoint-model", help="model name sent to the endpoint"),
    timeout: float = typer.Option(60.0, "--timeout", help="seconds to wait for one endpoint response"),
    retries: int = typer.Option(4, "--retries", help="retries of a failed endpoint request"),
    window: int = typer.Option(ExampleConfig.window, help="tokens per example window"),
    seed: int = typer.Option(0, help="sampling seed"),
    no_control: bool = typer.Option(False, "--no-control", help="skip the shuffled-explanation control"),
    as_json: bool = JsonOpt,
):
    """Explain features from stored activations (or --windows JSONL): best-of-k, scored on held-out windows."""
    from ..autointerp.examples import ExampleConfig, feature_sequences, make_examples, make_windows
    from ..autointerp.explainer import explainer_from
    from ..autointerp.llm import EndpointConfig, EndpointLLM, LocalLLM
    from ..autointerp.search import SearchConfig, explanations, run_search, summary
    from ..autointerp.simulator import simulator_from
    from ..results import ResultsDB
    from ..store import ActivationStore

    at_least("--k", k, 1)
    if windows is not None:
        from ..autointerp.formats import explain_file

        s = load_model(model, device)
        rows = explain_file(windows, explainer_from(explainer, s), simulator_from(simulator, s), k=k, seed=seed)
        return Output({"windows": str(windows), "features": rows})
    if store is None or features is None:
        raise typer.BadParameter("give --store and --features, or --windows", param_hint="--store")
    at_least("--window", window, 2)
    at_least("--timeout", timeout, 0.1)
    at_least("--retries", retries, 0)
    feats = parse_features(features)
    st = ActivationStore(store)
    for f in feats:
        if f.site not in st.sites:
            raise typer.BadParameter(f"feature {f.id}: site {f.site!r} is not in the store {str(store)!r}; it holds "
                                     f"{st.sites}", param_hint="--features")
        index = getattr(f, "index", None)
        if index is None and ":" in f.id:
            index = int(f.id.rpartition(":")[2])
        if index is not None and index >= st.manifest.widths[f.site]:
            raise typer.BadParameter(f"feature {f.id}: index {index} is out of range; {f.site} in the store has "
                                     f"{st.manifest.widths[f.site]} dimensions (0..{st.manifest.widths[f.site] - 1})",
                                     param_hint="--features")
    s = load_model(model, device)
    llm = (EndpointLLM(EndpointConfig(base_url=endpoint, model=endpoint_model, timeout=timeout, max_retries=retries))
           if endpoint else LocalLLM(s))
    # --endpoint keeps the prompted pipeline on it; otherwise the trained ones (prompted on other models)
    ex = llm if endpoint else explainer_from(explainer, s)
    sim = llm if endpoint else simulator_from(simulator, s)
    ex_cfg = ExampleConfig(window=window, seed=seed)
    cfg = SearchConfig(k=k, seed=seed, control=not no_control, examples=ex_cfg)

    def sets_of(f):
        return lambda: make_examples(make_windows(feature_sequences(st, f, s.tokenizer), window, ex_cfg.min_window), ex_cfg)

    out = out or Path(store) / f"explain-k{k}"
    results = run_search(ex, sim, [(f.id, sets_of(f)) for f in feats], cfg, out, ResultsDB(), progress=not as_json,
                         meta={"store": str(store)}, judge=llm)
    found = {e.feature: e for e in explanations(results)}  # the core Explanation of each explained feature
    rows = [dict(feature=f, explanation=found[f].text, skipped=None, simulation=found[f].scores.get("simulation"),
                 control=found[f].scores.get("control_simulation"), scores=found[f].scores, run_id=found[f].run_id)
            if f in found else dict(feature=f, explanation=None, skipped=r.get("skipped"), simulation=None, control=None)
            for f, r in results.items()]

    def human():
        t = Table(title=f"explanations (best of {k}), test-split simulation r vs control")
        for col in ("feature", "explanation", "sim r", "control r"):
            t.add_column(col)
        fmt = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
        for r in rows:
            t.add_row(r["feature"], r["explanation"] or f"({r['skipped']})", fmt(r["simulation"]), fmt(r["control"]))
        Console().print(t)

    return Output({"out": str(out), "summary": summary(results), "features": rows}, human, {"out": out})


@command(app, "simulate", kind="autointerp.simulate")
def simulate(
    data: Path = typer.Option(..., "--data", help='.jsonl of {"id", "explanation", "windows": [{"tokens", "values"?}]}'),
    simulator: str = typer.Option("default", "--simulator", help="default | prompt | URL | adapter dir"),
    model: Optional[str] = ModelOpt,
    device: str = DeviceOpt,
    as_json: bool = JsonOpt,
):
    """Simulate features from their explanations: predicted values per token and r against given values."""
    from ..autointerp.formats import simulate_file
    from ..autointerp.simulator import simulator_from

    s = load_model(model, device)
    sim = simulator_from(simulator, s)
    rows = simulate_file(data, sim)

    def human():
        t = Table(title=f"simulation ({sim.name})")
        for col in ("id", "r", "tokens"):
            t.add_column(col)
        for r in rows:
            t.add_row(str(r["id"]), "-" if r["r"] is None else f"{r['r']:.3f}", str(sum(map(len, r["predictions"]))))
        Console().print(t)

    return Output({"data": str(data), "simulator": sim.name, "features": rows}, human)
