"""Best-of-k explanation search: sample k explanations from the train split, keep the one the
simulator scores best on the validation split, report its scores on the test split next to a
control (another feature's explanation scored on this feature's test split).

    results = run_search(explainer, simulator, features, SearchConfig(k=8), out="runs/explain1", db=ResultsDB())

`explainer` is an LLM (the prompted explainer of explain.py) or a trained explainer (explainer.py:
`.explain(windows, k, seed=...)`); `simulator` is a Simulator (simulator.py) or an LLM (the prompted
simulator on it). Detection and fuzzing need an LLM to ask: `judge`, else the simulator when it is an
LLM, else they are left out (recorded with the reason). Undefined scores are None and left out of
`summary`'s means.

`features` is a list of (feature_id, make_sets) where make_sets() -> {"train"|"val"|"test": ExampleSet}
(see examples.py), so a resumed run does not rebuild the examples of finished features.
The run is resumable: out/progress.json is rewritten atomically after every feature (and every
control); running again with the same config skips what is done. Every explanation and score goes to
the results database with the explainer model, prompt version and seed.
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from tqdm.auto import tqdm

from ..features import Explanation
from ..io import atomic_write_json
from ..metrics import mean_defined
from ..results import ResultsDB
from . import explain as E
from . import score as S
from . import simulate as SIM
from .examples import ExampleConfig, ExampleSet
from .llm import LLM
from .simulator import Simulator, selector_of

PROMPT_VERSION = f"{E.PROMPT_VERSION}/{SIM.PROMPT_VERSION}/{S.DETECTION_VERSION}/{S.FUZZ_VERSION}"
FALLBACK_CONTROLS = ("references to sports teams", "the closing parenthesis in code", "words about cooking")


@dataclass(frozen=True)
class SearchConfig:
    k: int = 8
    """explanations sampled per feature (best-of-k on the validation split)"""
    temperature: float = 0.8
    """explainer sampling temperature"""
    max_tokens: int = 48
    """explainer reply length"""
    n_explain: int = 10
    """windows shown to the explainer (half top, half quantile-stratified, from the train split)"""
    detection: bool = True
    """score the selected explanation by detection on the test split"""
    fuzzing: bool = True
    """score the selected explanation by fuzzing on the test split"""
    control: bool = True
    """also score another feature's explanation on this feature's test split"""
    yes_no: tuple[str, str] = S.YES_NO
    """the two answer tokens read for detection and fuzzing (each must be one token)"""
    max_value: int | None = None
    """top of the simulation scale (None: 10 if "10" is one token for the simulator, else 9)"""
    seed: int = 0
    """explainer sampling seed (mixed with a hash of the feature id)"""
    examples: ExampleConfig = field(default_factory=ExampleConfig)
    """how examples are drawn (recorded here so a resume can check it)"""


def feature_seed(cfg: SearchConfig, feature: str) -> int:
    return cfg.seed * 1_000_003 + zlib.crc32(feature.encode()) % 1_000_003


def judge_of(simulator, judge: LLM | None) -> LLM | None:
    """The LLM asked for detection and fuzzing: `judge`, else the simulator if it is an LLM."""
    return judge if judge is not None else (simulator if hasattr(simulator, "position_probs") else None)


def score_on_test(simulator: Simulator | LLM, text: str, test: ExampleSet, cfg: SearchConfig, judge: LLM | None = None) -> dict:
    """Simulation (top+random and random-only), detection and fuzzing on the test split."""
    out = {"simulation": S.simulation_score(simulator, text, test.top, test.random, cfg.max_value)}
    llm = judge_of(simulator, judge)
    for m, on in (("detection", cfg.detection), ("fuzzing", cfg.fuzzing)):
        if on and llm is None:
            out[m] = {"auroc": None, "reason": "no LLM to ask (the simulator is not an LLM and no judge was given)"}
        elif on and m == "detection":
            out[m] = S.detection_score(llm, text, test.activating, test.negative + test.hard_negative, cfg.yes_no)
        elif on:
            out[m] = S.fuzzing_score(llm, text, test.activating, test.threshold, cfg.seed, cfg.yes_no)
    return out


def candidates(explainer, windows, cfg: SearchConfig, seed: int) -> list[str]:
    """k explanations from a prompted (LLM) or a trained explainer."""
    if hasattr(explainer, "generate"):
        return E.explain(explainer, windows, cfg.k, cfg.temperature, cfg.max_tokens, seed, cfg.examples.threshold)
    return explainer.explain([(w.tokens, w.values) for w in windows], k=cfg.k, seed=seed)


def search_feature(explainer, simulator: Simulator | LLM, feature: str, sets: dict[str, ExampleSet], cfg: SearchConfig,
                   judge: LLM | None = None) -> dict:
    """k candidates scored on val, the best scored on test. Returns a JSON-able record."""
    t0 = time.perf_counter()
    train, val, test = sets["train"], sets["val"], sets["test"]
    if not train.top:
        return {"feature": feature, "skipped": "no activating windows in the train split", "seconds": 0.0}
    seed = feature_seed(cfg, feature)
    wins = E.explanation_windows(train.top, train.stratified, cfg.n_explain, seed)
    texts = candidates(explainer, wins, cfg, seed)
    if not texts:
        return {"feature": feature, "skipped": f"none of the {cfg.k} explainer replies held an explanation",
                "seconds": time.perf_counter() - t0}
    chooser = selector_of(simulator)  # a trained simulator reading with examples selects plainly
    cands = [{"text": t, "val": S.simulation_score(chooser, t, val.top, val.random, cfg.max_value)} for t in texts]
    best = max(range(len(cands)), key=lambda i: -2.0 if cands[i]["val"]["all"] is None else cands[i]["val"]["all"])
    return {
        "feature": feature,
        "seed": seed,
        "candidates": cands,
        "best": best,
        "text": cands[best]["text"],
        "test": score_on_test(simulator, cands[best]["text"], test, cfg, judge),
        "seconds": time.perf_counter() - t0,
    }


def _record(db: ResultsDB, run_id: int, rec: dict, explainer: str, cfg: SearchConfig) -> None:
    for i, c in enumerate(rec["candidates"]):
        eid = db.add_explanation(
            run_id, rec["feature"], c["text"], explainer=explainer, prompt_version=PROMPT_VERSION, seed=rec["seed"],
            scores=[("simulation", "val", c["val"]["all"], c["val"])],
        )
        c["id"] = eid
        if i == rec["best"]:
            db.add_score(eid, "selected", "val", 1.0, {"k": cfg.k, "n_candidates": len(rec["candidates"])})
            for metric, split, value, details in flatten(rec["test"]):
                db.add_score(eid, metric, split, value, details)


def flatten(scores: dict) -> list[tuple[str, str, float, dict]]:
    out = []
    sim = scores["simulation"]
    out.append(("simulation", "test", sim["all"], sim))
    out.append(("simulation_random", "test", sim["random"], sim))
    for m in ("detection", "fuzzing"):
        if m in scores:
            out.append((m, "test", scores[m]["auroc"], scores[m]))
    return out


def run_search(
    explainer,
    simulator: Simulator | LLM,
    features: Sequence[tuple[str, Callable[[], dict[str, ExampleSet]]]],
    cfg: SearchConfig,
    out: str | Path,
    db: ResultsDB | None = None,
    on_feature: Callable[[dict], None] | None = None,
    progress: bool = True,
    meta: dict | None = None,
    judge: LLM | None = None,
) -> dict[str, dict]:
    """Explain and score every feature; resumable from `out`. Returns {feature_id: record}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = {"search": asdict(cfg), "explainer": explainer.name, "simulator": simulator.name,
              "prompt_version": PROMPT_VERSION, **(meta or {})}
    cpath, ppath = out / "config.json", out / "progress.json"
    if cpath.exists():
        have = json.loads(cpath.read_text())
        if have != json.loads(json.dumps(config)):
            diff = sorted(k for k in set(have) | set(config) if have.get(k) != json.loads(json.dumps(config)).get(k))
            raise ValueError(f"{out} holds a search with a different config (differs in {diff}); use a new --out")
    else:
        atomic_write_json(cpath, config)
    done: dict[str, dict] = json.loads(ppath.read_text()) if ppath.exists() else {}
    db = db or ResultsDB()
    ids = [f for f, _ in features]
    if len(set(ids)) != len(ids):
        raise ValueError(f"feature ids must be unique; got duplicates in {ids}")
    sets_cache: dict[str, dict[str, ExampleSet]] = {}
    # runs that wrote into this out dir before: what they recorded for a feature that progress.json
    # does not list was cut off between the database and progress writes, and is written again
    earlier = [r["id"] for r in db.runs("autointerp.explain") if r["config"].get("out") == str(out)]
    with db.run("autointerp.explain", {**config, "out": str(out), "features": ids}) as run:
        todo = [(f, mk) for f, mk in features if f not in done]
        bar = tqdm(total=len(features), initial=len(features) - len(todo), desc="explain", unit="feature", disable=not progress)
        for f, mk in todo:
            sets_cache[f] = mk()
            rec = search_feature(explainer, simulator, f, sets_cache[f], cfg, judge)
            if "candidates" in rec:
                db.forget_explanations(f, earlier, control=False)
                _record(db, run.id, rec, explainer.name, cfg)
            rec["run_id"] = run.id
            done[f] = rec
            atomic_write_json(ppath, done)
            bar.update(1)
            r = rec.get("test", {}).get("simulation", {}).get("all")
            bar.set_postfix_str(f"{f}: {'undefined' if r is None else f'{r:.2f}'}")
            if on_feature is not None:
                on_feature(rec)
        bar.close()
        if cfg.control:
            scored = [f for f in ids if "text" in done.get(f, {})]
            for i, f in enumerate(tqdm(scored, desc="control", disable=not progress)):
                if "control" in done[f]:
                    continue
                other = scored[(i + 1) % len(scored)] if len(scored) > 1 else None
                text = done[other]["text"] if other else FALLBACK_CONTROLS[0]
                if f not in sets_cache:
                    sets_cache[f] = dict(features)[f]()
                scores = score_on_test(simulator, text, sets_cache[f]["test"], cfg, judge)
                db.forget_explanations(f, earlier, control=True)
                db.add_explanation(
                    run.id, f, text, explainer=f"control:{other or 'fallback'}", prompt_version=PROMPT_VERSION,
                    seed=None, scores=flatten(scores),
                )
                done[f]["control"] = {"text": text, "from": other, "test": scores}
                atomic_write_json(ppath, done)
        run.outputs["progress"] = str(ppath)
    return {f: done[f] for f in ids if f in done}


SCORE_PATHS = {
    "simulation": ("test", "simulation", "all"),
    "simulation_random": ("test", "simulation", "random"),
    "detection_auroc": ("test", "detection", "auroc"),
    "fuzzing_auroc": ("test", "fuzzing", "auroc"),
    "control_simulation": ("control", "test", "simulation", "all"),
    "control_detection_auroc": ("control", "test", "detection", "auroc"),
    "control_fuzzing_auroc": ("control", "test", "fuzzing", "auroc"),
}
"""where each test-split score sits in a search record"""


def _get(r: dict, *path):
    for k in path:
        r = r.get(k) if isinstance(r, dict) else None
    return r


def explanations(results: dict[str, dict]) -> list[Explanation]:
    """The selected explanation of every explained feature as the core `Explanation` (its test-split scores
    and their shuffled-explanation controls; an undefined score is left out of `scores`)."""
    out = []
    for fid, r in results.items():
        if "text" not in r:
            continue
        scores = {name: v for name, path in SCORE_PATHS.items() if (v := _get(r, *path)) is not None}
        out.append(Explanation(fid, r["text"], scores, r.get("run_id")))
    return out


def summary(results: dict[str, dict]) -> dict:
    """Mean test scores of the selected explanations and of the controls, over the features where the
    score is defined (undefined ones are left out and counted under "undefined")."""
    explained = [r for r in results.values() if "text" in r]
    out: dict = {"features": len(results), "explained": len(explained)}
    undefined = {}
    for name, path in SCORE_PATHS.items():
        vals = [_get(r, *path) for r in explained]
        out[name] = mean_defined(vals)
        undefined[name] = sum(v is None for v in vals)
    out["undefined"] = undefined
    return out
