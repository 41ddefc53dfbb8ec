"""Explainer recovery of several explainer adapters on the benchmark's held-out features (the same
calls as benchmarks/autointerp.py part (c)): best of k by the simulator on the select windows, r on
the test windows / the true explanation's r there; mean ratio capped at 1 over the defined ratios.

    OMP_NUM_THREADS=1 PYTHONPATH=src python research/autointerp/compare_explainers.py --data runs/simdata4 \
        --out research/autointerp/explainer_comparison.json [--sim DIR] NAME=DIR [NAME=DIR ...]
"""

import argparse
import json
import time

import numpy as np
import torch

from metalens import load_subject
from metalens.autointerp.explainer import TrainedExplainer, simulation_r
from metalens.autointerp.formats import explain_one
from metalens.autointerp.simulator import TrainedSimulator
from metalens.autointerp.train import first_per_rule
from metalens.io import atomic_write_json, jsonl_objects

ap = argparse.ArgumentParser()
ap.add_argument("--data", required=True)
ap.add_argument("--out", required=True)
ap.add_argument("--sim", default=None, help="simulator adapter dir (default: the shipped one)")
ap.add_argument("--k", type=int, default=8)
ap.add_argument("explainers", nargs="+", help="NAME=DIR")
a = ap.parse_args()
torch.set_num_threads(1)
s = load_subject(device="cpu")
sim = TrainedSimulator.load(s, a.sim)
held = first_per_rule([o for _, o in jsonl_objects(f"{a.data}/heldout.jsonl")])
out = {"date": time.strftime("%Y-%m-%d"), "data": a.data, "sim": a.sim or "shipped", "k": a.k, "explainers": {}}
for spec in a.explainers:
    name, path = spec.split("=", 1)
    ex = TrainedExplainer.load(s, path)
    rows = {}
    for f in held:
        wins = [(w["tokens"], w["values"]) for w in f["windows"]]
        row = explain_one(f["id"], wins, ex, sim, k=a.k, seed=0)
        true_r = simulation_r(sim, f["explanation"], [wins[i] for i in row["split"]["test"]])
        ok = row["score"] is not None and true_r is not None and true_r > 0.05
        rows[f["id"]] = {"truth": f["explanation"], "found": row["explanation"], "found_r": row["score"],
                         "true_r": true_r, "recovery": row["score"] / true_r if ok else None}
    ratios = [r["recovery"] for r in rows.values() if r["recovery"] is not None]
    out["explainers"][name] = {"dir": path, "steps": json.load(open(f"{path}/adapter.json")).get("steps"),
                               "mean_ratio_capped": float(np.mean(np.minimum(ratios, 1))) if ratios else None,
                               "reached_0.8": sum(x >= 0.8 for x in ratios), "defined": len(ratios), "per_feature": rows}
    print(name, out["explainers"][name]["mean_ratio_capped"], out["explainers"][name]["reached_0.8"], len(ratios), flush=True)
    atomic_write_json(a.out, out)
