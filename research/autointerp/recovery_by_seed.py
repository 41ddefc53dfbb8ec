"""Recovery on every line of a rule, kept per feature and per explainer seed, with every candidate scored.

    OMP_NUM_THREADS=1 PYTHONPATH=src:benchmarks .venv/bin/python research/autointerp/recovery_by_seed.py \\
        --data runs/fresh --simulator runs/stage4_sim --name stage4 --seeds 0 1 2 --state runs/rbs/stage4.json
    (the same with --simulator default --name stage5), then
    PYTHONPATH=src:benchmarks .venv/bin/python research/autointerp/recovery_by_seed.py --summarise \\
        runs/rbs/stage4.json runs/rbs/stage5.json --out research/autointerp/recovery_by_seed_fresh.json

benchmarks/autointerp.py keeps per-feature rows of seed 0 only, so a change of its mean over seeds
cannot be traced to features. Here each (seed, feature) keeps the k candidates (the explainer does not
depend on the simulator: the same seed gives the same candidates under either simulator), their r on
the select windows (what best-of-k picks on) and on the test windows, and the truth's r on the test
windows. Summarising two runs separates the two things a simulator changes in recovery =
r(found) / r(truth): which candidate it picks, and how it reads the found and the true explanations.
Resumable: --state is rewritten atomically after every feature.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from autointerp import MIN_TRUE_R, merged_per_rule, recovery_ratio
from metalens import load_subject
from metalens.autointerp.explainer import TrainedExplainer, simulation_r
from metalens.autointerp.formats import explain_one
from metalens.autointerp.simulator import TrainedSimulator
from metalens.io import atomic_write_json, jsonl_objects

def run(args) -> None:
    torch.set_num_threads(args.threads)
    spath = Path(args.state)
    state = json.loads(spath.read_text()) if spath.exists() else {"simulator": args.name, "rows": {}}
    s = load_subject(device="cpu")
    sim = TrainedSimulator.load(s, None if args.simulator == "default" else args.simulator)
    ex = TrainedExplainer.load(s, None)
    feats = merged_per_rule([o for _, o in jsonl_objects(Path(args.data) / "heldout.jsonl")])
    for seed in args.seeds:
        for f in feats:
            key = f"{seed}|{f['id']}"
            if key in state["rows"]:
                continue
            c0 = time.process_time()
            wins = [(w["tokens"], w["values"]) for w in f["windows"]]
            row = explain_one(f["id"], wins, ex, sim, k=args.k, seed=seed)  # as benchmarks/autointerp.py
            cands = [c["text"] for c in row["candidates"]]
            best = cands.index(row["explanation"]) if row["explanation"] is not None else None
            test_wins = [wins[i] for i in row["split"]["test"]]
            test = [row["score"] if i == best else simulation_r(sim, c, test_wins) for i, c in enumerate(cands)]
            r = state["rows"][key] = {"seed": seed, "id": f["id"], "family": f["family"], "truth": f["explanation"],
                                      "true_r": simulation_r(sim, f["explanation"], test_wins), "candidates": cands,
                                      "select_r": [c["select_r"] for c in row["candidates"]], "test_r": test,
                                      "best": best, "split": row["split"], "cpu_s": time.process_time() - c0}
            atomic_write_json(spath, state)
            print(f"{args.name} seed {seed} {f['id']:28s} best {row['explanation']!r} test r {row['score']} "
                  f"true r {r['true_r']}", flush=True)


def capped_mean(xs: list) -> tuple[float | None, int]:
    d = [min(x, 1.0) for x in xs if x is not None]
    return (float(np.mean(d)) if d else None), len(d)


def summarise(paths: list[str], out: str) -> None:
    runs = [json.loads(Path(p).read_text()) for p in paths]
    names = [r["simulator"] for r in runs]
    keys = sorted(set.intersection(*(set(r["rows"]) for r in runs)))
    res: dict = {"simulators": names, "features": len(keys), "min_true_r": MIN_TRUE_R,
                 "same_candidates": sum(all(r["rows"][k]["candidates"] == runs[0]["rows"][k]["candidates"] for r in runs)
                                        for k in keys)}
    seeds = sorted({runs[0]["rows"][k]["seed"] for k in keys})

    def by_seed(ratio_of) -> dict:
        """ratio_of(key) -> ratio or None; capped means per seed and their mean."""
        per = {}
        for seed in seeds:
            m, n = capped_mean([ratio_of(k) for k in keys if runs[0]["rows"][k]["seed"] == seed])
            per[str(seed)] = {"mean_ratio_capped": m, "defined": n}
        return {"per_seed": per, "mean_over_seeds": float(np.mean([v["mean_ratio_capped"] or 0 for v in per.values()]))}

    def found_r(picker: dict, reader: dict, k: str) -> float | None:
        best = picker["rows"][k]["best"]
        return reader["rows"][k]["test_r"][best] if best is not None else None

    # candidate picked by one simulator, found and truth read by another
    rec = {f"picked by {a}, read by {b}": by_seed(lambda k, pa=pa, pb=pb: recovery_ratio(found_r(pa, pb, k),
                                                                                          pb["rows"][k]["true_r"]))
           for a, pa in zip(names, runs) for b, pb in zip(names, runs)}
    # the best candidate on the test windows (an oracle pick): how much of recovery is the pick
    for b, pb in zip(names, runs):
        rec[f"best on test, read by {b}"] = by_seed(lambda k, pb=pb: recovery_ratio(
            max((x for x in pb["rows"][k]["test_r"] if x is not None), default=None), pb["rows"][k]["true_r"]))
    res["recovery"] = rec
    # sensitivity of each simulator's own recovery to the definition: the r the truth must exceed, and
    # clipping ratios to [0, 1] (the benchmark caps at 1 only; a truth read at r just over the threshold
    # turns a slightly negative found r into a large negative ratio)
    sens = {}
    for b, pb in zip(names, runs):
        for thr in (MIN_TRUE_R, 0.1, 0.2):
            for floor in (False, True):
                def ratio_of(k, pb=pb, thr=thr, floor=floor):
                    x = recovery_ratio(found_r(pb, pb, k), pb["rows"][k]["true_r"], thr)
                    return None if x is None else max(x, 0.0) if floor else x
                sens[f"{b}, truth r > {thr}{', ratios clipped to [0, 1]' if floor else ''}"] = by_seed(ratio_of)
    res["sensitivity"] = sens
    res["per_feature"] = {k: {n: {"true_r": r["rows"][k]["true_r"],
                                  "found": r["rows"][k]["candidates"][r["rows"][k]["best"]] if r["rows"][k]["best"] is not None else None,
                                  "found_r": r["rows"][k]["test_r"][r["rows"][k]["best"]] if r["rows"][k]["best"] is not None else None}
                              for n, r in zip(names, runs)} for k in keys}
    atomic_write_json(Path(out), res)
    for k, v in {**rec, **sens}.items():
        print(f"{k:52s} " + "  ".join(f"seed {s}: {d['mean_ratio_capped']:.3f} ({d['defined']})"
                                      for s, d in v["per_seed"].items() if d["mean_ratio_capped"] is not None)
              + f"  mean {v['mean_over_seeds']:.3f}")
    print(f"same candidates under every simulator: {res['same_candidates']} of {len(keys)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="runs/fresh")
    ap.add_argument("--simulator", default="default", help="adapter folder, or 'default' (the shipped one)")
    ap.add_argument("--name", default="shipped")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--state", default="runs/rbs/state.json")
    ap.add_argument("--summarise", nargs="+", default=None, help="state files of runs to compare")
    ap.add_argument("--out", default="research/autointerp/recovery_by_seed_fresh.json")
    args = ap.parse_args()
    if args.summarise:
        summarise(args.summarise, args.out)
    else:
        run(args)


if __name__ == "__main__":
    main()
