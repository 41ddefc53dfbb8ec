"""Autointerp ground truth: synthetic features with known rules on real text (synthetic.py).

    .venv/bin/python benchmarks/autointerp.py [--k 4] [--controls 5] [--features months,quoted,...] [--threads 2]

Reports, with the default local model (SmolLM2-135M-Instruct) as explainer and simulator:
  (i)   simulator validity: AUROC of the true explanation's simulation score (test split, top+random)
        against shuffled explanations (other features' true explanations, other families only)
  (ii)  explainer recovery: test score of the best-of-k explanation found / test score of the true one
  (iii) throughput: features explained and scored per CPU-minute (process CPU time, all threads),
        and the speed-up of one-forward-pass simulation over one call per token, same windows, same run
Every stage checkpoints to --out (state.json); running again resumes. Writes benchmarks/results/autointerp.json.
Targets: validity AUROC >= 0.9, simulation speed-up >= 20x.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from metalens import ResultsDB, load_subject
from metalens.autointerp.examples import ExampleConfig, make_examples, make_windows
from metalens.autointerp.llm import LocalLLM
from metalens.autointerp.score import auroc, simulation_score
from metalens.autointerp.search import SearchConfig, run_search, summary
from metalens.autointerp.simulate import scale_for, simulate, simulate_per_token
from metalens.autointerp.synthetic import BY_NAME, FEATURES, corpus, feature_sequences, tokenize_corpus
from metalens.store import atomic_write_json

ROOT = Path(__file__).parent


def cpu() -> float:
    return time.process_time()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=4, help="explanations sampled per feature")
    ap.add_argument("--controls", type=int, default=5, help="shuffled explanations per feature for validity")
    ap.add_argument("--features", default="all", help="comma-separated names, or all")
    ap.add_argument("--search-features", default="months,weekdays,numbers,quoted,colours,dates",
                    help="features for the (slow) best-of-k search stage, or all")
    ap.add_argument("--window", type=int, default=32, help="tokens per example window")
    ap.add_argument("--speed-windows", type=int, default=4, help="windows timed one-pass vs per-token")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "results" / "autointerp_run"))
    ap.add_argument("--skip-search", action="store_true", help="only speed + validity")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spath = out / "state.json"
    state = json.loads(spath.read_text()) if spath.exists() else {}
    save = lambda: atomic_write_json(spath, state)  # noqa: E731

    s = load_subject(device="cpu")
    llm = LocalLLM(s, batch_size=4)
    max_value = scale_for(llm)
    feats = FEATURES if args.features == "all" else [BY_NAME[n] for n in args.features.split(",")]
    tokens = tokenize_corpus(s.tokenizer, corpus())
    ex_cfg = ExampleConfig(window=args.window, n_top=5, n_random=5, n_quantiles=2, n_per_quantile=2, n_negative=4, n_hard=4)
    sets = {f.name: make_examples(make_windows(feature_sequences(f, tokens), ex_cfg.window, ex_cfg.min_window), ex_cfg)
            for f in feats}
    print(f"{len(feats)} synthetic features on {len(tokens)} texts ({sum(map(len, tokens))} tokens); scale 0..{max_value}")

    # ---- (iii b) one-pass vs per-token simulation, same windows --------------------------------
    if "speed" not in state:
        f = feats[0]
        wins = [w.tokens for w in sets[f.name]["test"].top[: args.speed_windows]]
        simulate(llm, f.explanation, wins[:1], max_value)  # warm-up: the first forward pass pays for allocations
        t0, c0 = time.perf_counter(), cpu()
        one = simulate(llm, f.explanation, wins, max_value)
        t1, c1 = time.perf_counter(), cpu()
        per = simulate_per_token(llm, f.explanation, wins, max_value)
        t2, c2 = time.perf_counter(), cpu()
        diff = max(float(np.abs(a - b).max()) for a, b in zip(one, per))
        state["speed"] = dict(windows=len(wins), tokens=sum(map(len, wins)), one_pass_s=t1 - t0, per_token_s=t2 - t1,
                              one_pass_cpu_s=c1 - c0, per_token_cpu_s=c2 - c1, speedup_wall=(t2 - t1) / (t1 - t0),
                              speedup_cpu=(c2 - c1) / (c1 - c0), max_abs_diff=diff)
        save()
    sp = state["speed"]
    print(f"simulation of {sp['tokens']} tokens: one pass {sp['one_pass_s']:.1f}s, per token {sp['per_token_s']:.1f}s "
          f"-> {sp['speedup_wall']:.1f}x wall, {sp['speedup_cpu']:.1f}x CPU (max |diff| {sp['max_abs_diff']:.2e})")

    # ---- (i) validity --------------------------------------------------------------------------
    val = state.setdefault("validity", {})
    rng = np.random.default_rng(0)
    for f in feats:
        if f.name in val:
            continue
        t0 = cpu()
        others = [g for g in FEATURES if g.family != f.family or not f.family]
        others = [g for g in others if g.name != f.name and g.explanation != f.explanation]
        ctrl = [others[i] for i in rng.choice(len(others), size=min(args.controls, len(others)), replace=False)]
        test = sets[f.name]["test"]
        true = simulation_score(llm, f.explanation, test.top, test.random, max_value)
        controls = {g.name: simulation_score(llm, g.explanation, test.top, test.random, max_value) for g in ctrl}
        val[f.name] = {"true": true, "controls": controls, "cpu_s": cpu() - t0}
        save()
        print(f"  validity {f.name:15s} true r={true['all']:+.3f}  controls " +
              " ".join(f"{v['all']:+.2f}" for v in controls.values()))
    pos = [v["true"]["all"] for v in val.values()]
    neg = [c["all"] for v in val.values() for c in v["controls"].values()]
    validity = auroc(pos + neg, [1] * len(pos) + [0] * len(neg))
    # per feature: does the true explanation beat each of its own controls?
    paired = float(np.mean([np.mean([v["true"]["all"] > c["all"] for c in v["controls"].values()]) for v in val.values()]))
    print(f"(i) simulator validity AUROC {validity:.3f} (true vs shuffled, {len(pos)} true, {len(neg)} shuffled); "
          f"paired win rate {paired:.3f}")

    # ---- (ii) recovery + (iii a) throughput ------------------------------------------------------
    rec = {}
    if not args.skip_search:
        cfg = SearchConfig(k=args.k, max_value=max_value, examples=ex_cfg, control=True)
        sfeats = feats if args.search_features == "all" else [BY_NAME[n] for n in args.search_features.split(",")]
        cpu_of = state.setdefault("search_cpu_s", {})  # per feature, kept across resumed invocations
        last = [cpu()]

        def tick(rec: dict) -> None:
            cpu_of[rec["feature"]] = cpu() - last[0]
            last[0] = cpu()
            save()

        res = run_search(llm, llm, [(f.name, (lambda n=f.name: sets[n])) for f in sfeats], cfg, out / "search",
                         ResultsDB(out / "results.sqlite"), on_feature=tick, meta={"benchmark": "synthetic"})
        if "control" not in cpu_of:
            cpu_of["control"] = cpu() - last[0]  # the control pass runs after the last feature
            save()
        cpu_min = sum(cpu_of.values()) / 60
        rows = {}
        for f in sfeats:
            r = res[f.name]
            true = val[f.name]["true"]["all"]
            found = r.get("test", {}).get("simulation", {}).get("all")
            rows[f.name] = dict(true=true, found=found, explanation=r.get("text"), truth=f.explanation,
                                recovery=(found / true) if found is not None and true > 0.05 else None)
            print(f"  {f.name:15s} found r={found if found is None else round(found, 3)}  true r={true:+.3f}  {r.get('text')!r}")
        ratios = [x["recovery"] for x in rows.values() if x["recovery"] is not None]
        rec = dict(per_feature=rows, mean_recovery=float(np.mean(ratios)) if ratios else None,
                   summary=summary(res), cpu_minutes=cpu_min, cpu_s_per_feature=cpu_of,
                   features_per_cpu_minute=len(sfeats) / cpu_min)
        print(f"(ii) explainer recovery (found / true test r, features with true r > 0.05): "
              f"{rec['mean_recovery']}; (iii) {rec['features_per_cpu_minute']:.3f} features per CPU-minute")

    result = dict(
        model=s.name, machine=platform.processor() or platform.machine(), threads=args.threads, cpus=os.cpu_count(),
        n_features=len(feats), k=args.k, scale_max=max_value, speed=sp, validity_auroc=validity,
        validity_paired_win_rate=paired, validity=val, recovery=rec,
        targets={"validity_auroc>=0.9": validity >= 0.9, "speedup>=20x": sp["speedup_wall"] >= 20},
    )
    atomic_write_json(ROOT / "results" / "autointerp.json", result)
    print(f"wrote {ROOT / 'results' / 'autointerp.json'}")


if __name__ == "__main__":
    main()
