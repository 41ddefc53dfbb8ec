"""The agent vs one-shot best-of-k vs the oracle as explainer, side by side on the same features, windows
and simulator (FIND-style ground truth where there is one).

    python benchmarks/agent.py [--budget 6] [--endpoint URL --endpoint-model NAME] [--work runs/bench-agent]

Features (all read on the same held-out text: one-line common-sense claims + hand-written sentences):
  rule:*      synthetic per-token rules of the held-out families (autointerp/rules.py: places, nature,
              compound), known explanation = the rule's first phrasing
  dir:*       planted directions at resid.6: mean residual on tokens where a rule fires minus the mean
              elsewhere (a probe-like direction for a known word class); known explanation = that rule's
  sae:*       latents of a small TopK SAE trained here on news text at resid.6 (no ground truth)
Per feature: the agent (driven by the local model, or --endpoint), its budget spent and tools used; one-shot
best-of-k with k = the agent's LLM calls (the explainer's k candidates, best on the check windows); the oracle
as explainer (the direction injected + the top firing contexts read, best on check). Every explanation is scored
by the same simulator on the same held-out test windows; "names the rule" = its r >= 0.8 x the true
explanation's r, judged only where the true explanation's own r reaches --min-truth-r (else the simulator
cannot tell a right answer from a wrong one and the verdict is null). Agent runs and per-feature rows are cached under --work (rerun to resume).
Writes benchmarks/results/agent.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from collections import Counter
from pathlib import Path

import torch

from metalens import ActivationStore, Feature, capture, load_subject
from metalens.agent import AgentConfig, EndpointChat, LocalChat, Toolbox, direction_target, parse_target, rule_target
from metalens.agent.baselines import one_shot, oracle_explain
from metalens.agent.loop import run_agent, summariser
from metalens.autointerp.explainer import explainer_from, simulation_r
from metalens.autointerp.rules import make_rules
from metalens.autointerp.simulator import simulator_from
from metalens.autointerp.trainset import text_sources
from metalens.io import atomic_write_json
from metalens.metrics import mean_defined

from common import write_result

RULES = ("countries", "animals", "dates")  # held-out families: places, nature, compound
DIRECTIONS = ("colours", "months")
SITE = "resid.6"


def corpus(data: str | None, n_claims: int) -> list[str]:
    src = text_sources(data, n_pydoc=0)
    return src["claims"][:n_claims] + src["sentences"]


def planted_direction(subject, rule, texts: list[str]) -> torch.Tensor:
    """Mean residual at SITE on tokens where the rule fires minus the mean on the others: [d_model]."""
    acts = capture(subject, texts, [SITE], progress=False)
    toks = [subject.tokenizer.decode([t]) for t in acts.token_ids.tolist()]
    fires = torch.zeros(len(toks), dtype=torch.bool)
    for i in range(len(texts)):
        rows = (acts.text_idx == i).nonzero()[:, 0]
        fires[rows] = torch.as_tensor(rule.values([toks[r] for r in rows.tolist()]) > 0)
    x = acts[SITE]
    keep = acts.positions > 0  # position 0 is an attention sink
    return x[fires & keep].mean(0) - x[~fires & keep].mean(0)


def small_sae(subject, work: Path, news: list[str]) -> Path:
    """A TopK SAE (width 1024, k 16) on resid.6 of news text, trained once and kept under work/."""
    from metalens.sae import SaeTrainConfig, train_sae
    from metalens.store import capture_to_store

    out = work / "sae"
    if (out / "cfg.json").exists():
        return out
    store = work / "store-news"
    capture_to_store(subject, news, [SITE], store, source="news", max_length=96, progress=False)  # resumes
    train_sae(SaeTrainConfig(out=str(out), site=SITE, k=16, width=1024, batch_size=1024, steps=600),
              ActivationStore(store))
    return out


def pick_latents(sae_dir: Path, subject, texts: list[str], n: int) -> list[str]:
    """The first n latents firing on 1-5% of the corpus tokens (neither dead nor dense)."""
    from metalens.sae.io import load_sae

    sae = load_sae(sae_dir)
    acts = capture(subject, texts, [SITE], progress=False)
    x = acts[SITE][acts.positions > 0]
    with torch.no_grad():
        freq = (sae.encode(x.float()) > 0).float().mean(0)  # [width]
    ok = ((freq > 0.01) & (freq < 0.05)).nonzero()[:, 0].tolist()
    return [f"sae:{sae_dir}:{i}" for i in ok[:n]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="runs/bench-agent", help="cache: SAE, agent runs, per-feature rows")
    ap.add_argument("--data", default=os.environ.get("METALENS_AO_DATA", "../shared/data/ao"),
                    help="shared data root with classification_datasets/ (claims, news)")
    ap.add_argument("--budget", type=int, default=6, help="agent tool calls per feature")
    ap.add_argument("--claims", type=int, default=180, help="claim texts (4 claims each) in the corpus")
    ap.add_argument("--n-sae", type=int, default=2, help="SAE latents")
    ap.add_argument("--oracle-k", type=int, default=3, help="oracle answers per feature")
    ap.add_argument("--simulator", default="default", help="default | prompt | URL | adapter dir")
    ap.add_argument("--explainer", default="default", help="default | prompt | URL | adapter dir")
    ap.add_argument("--endpoint", default=None, help="OpenAI-compatible base URL (…/v1) to drive the agent")
    ap.add_argument("--endpoint-model", default="default")
    ap.add_argument("--min-truth-r", type=float, default=0.3,
                    help="'names the rule' is judged only where the true explanation's r reaches this")
    ap.add_argument("--only", default=None, help="regex: run only the features whose id matches")
    ap.add_argument("--name", default="agent", help="results file name under benchmarks/results/")
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    s = load_subject(device="cpu")
    texts = corpus(args.data, args.claims)
    sim, ex = simulator_from(args.simulator, s), explainer_from(args.explainer, s)
    if args.endpoint:
        from metalens.autointerp.llm import EndpointConfig, EndpointLLM

        llm = EndpointChat(EndpointLLM(EndpointConfig(base_url=args.endpoint, model=args.endpoint_model, timeout=300)))
    else:
        llm = LocalChat(s)
    from metalens.oracle import Oracle

    oracle_cell: dict = {}
    oracle = lambda: oracle_cell.setdefault("o", Oracle.load("default", device="cpu"))  # noqa: E731

    rules = {r.name: r for r in make_rules()}
    targets = [rule_target(rules[n], s.tokenizer) for n in RULES]
    for n in DIRECTIONS:
        v = planted_direction(s, rules[n], texts)
        targets.append(direction_target(s, Feature.from_direction(SITE, v, n), truth=rules[n].explanations[0]))
    news = text_sources(args.data, n_pydoc=0)["news"][:400]
    if args.n_sae and news:
        sae_dir = small_sae(s, work, news)
        targets += [parse_target(spec, s) for spec in pick_latents(sae_dir, s, texts, args.n_sae)]
    if args.only:
        targets = [t for t in targets if re.search(args.only, t.id)]

    rows = []
    for t in targets:
        slug = re.sub(r"[^\w.-]+", "_", t.id)[-80:]
        cached = work / "rows" / f"{slug}.json"
        if cached.exists():
            rows.append(json.loads(cached.read_text()))
            print(f"{t.id}: cached")
            continue
        t0 = time.time()
        box = Toolbox(s, t, texts, sim, ex, oracle, summariser(llm))
        res = run_agent(llm, box, work / "runs" / slug, AgentConfig(max_calls=args.budget))
        k = max(1, res.final["llm_calls"])
        shot = one_shot(box, k)
        orc = oracle_explain(box, args.oracle_k)
        test = box.scoring_windows("test")
        truth_r = simulation_r(sim, t.truth, test) if t.truth else None

        row = {"feature": t.id, "kind": t.id.split(":")[0] if not t.id.startswith(SITE) else
               ("dir" if "/dir:" in t.id else "sae"), "truth": t.truth, "truth_r": truth_r,
               "agent": {"explanation": res.explanation, "score": res.score, "source": res.source,
                         "steps": res.final["steps"], "llm_calls": res.final["llm_calls"],
                         "tool_calls": res.final["tool_calls"], "valid_calls": res.final["valid_calls"],
                         "tokens": res.final["tokens"], "tool_counts": res.final["tool_counts"],
                         "seconds": round(res.final["seconds"], 1)},
               "one_shot": shot, "oracle": orc,
               "seconds": round(time.time() - t0, 1)}
        atomic_write_json(cached, row)
        rows.append(row)
        print(f"{t.id}: agent {res.score} ({res.source}) one-shot {shot['score']} oracle {orc['score']} truth {truth_r}")

    def names(row, which):  # undefined where the simulator cannot tell that the true explanation works
        truth_r, r = row["truth_r"], row[which]["score"]
        return None if truth_r is None or truth_r < args.min_truth_r or r is None else bool(r >= 0.8 * truth_r)

    for row in rows:
        for which in ("agent", "one_shot", "oracle"):
            row[which]["names_rule"] = names(row, which)

    def summary(which):
        planted = [r for r in rows if r["truth"]]
        hits = [r[which]["names_rule"] for r in planted if r[which]["names_rule"] is not None]
        return {"mean_score": mean_defined(r[which]["score"] for r in rows),
                "mean_score_planted": mean_defined(r[which]["score"] for r in planted),
                "mean_score_sae": mean_defined(r[which]["score"] for r in rows if not r["truth"]),
                "names_rule": sum(hits), "names_rule_of": len(hits), "planted": len(planted)}

    tools = Counter()
    for r in rows:
        tools.update(r["agent"]["tool_counts"])
    valid = sum(r["agent"]["valid_calls"] for r in rows)
    calls = sum(r["agent"]["tool_calls"] for r in rows)
    result = {
        "llm": llm.name, "simulator": sim.name, "min_truth_r": args.min_truth_r, "explainer": ex.name, "budget": args.budget,
        "corpus": {"texts": len(texts), "source": "claims + sentences (held-out text sources)"},
        "summary": {"agent": summary("agent"), "one_shot_same_calls": summary("one_shot"),
                    "oracle": summary("oracle"), "truth": {"mean_score": mean_defined(r["truth_r"] for r in rows)}},
        "tool_use": {"counts": dict(tools), "tools_used": sorted(k for k in tools if k != "(unparsed)"),
                     "tools_available": 11, "valid_call_share": valid / calls if calls else None,
                     "answer_sources": dict(Counter(r["agent"]["source"] for r in rows)),
                     "mean_llm_calls": mean_defined(r["agent"]["llm_calls"] for r in rows),
                     "mean_tokens": mean_defined(r["agent"]["tokens"] for r in rows)},
        "features": rows, "wall_s": round(time.time() - t_start, 1),
        "feature_seconds": round(sum(r["seconds"] for r in rows), 1),  # per-feature work, cached rows included
    }
    write_result(args.name, result, threads=1)


if __name__ == "__main__":
    main()
