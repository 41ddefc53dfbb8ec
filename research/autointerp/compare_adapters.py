"""Validity of several simulator adapters on the benchmark's sets (the same calls as
benchmarks/autointerp.py part (a)): held-out families (one line per rule, and both lines), training
families on held-out text. Used for the stage-1 / stage-2 / same-steps-without-WordNet comparison.

    OMP_NUM_THREADS=1 PYTHONPATH=src python research/autointerp/compare_adapters.py --data runs/simdata3 \
        --out research/autointerp/adapter_comparison.json NAME=DIR [NAME=DIR ...]
"""

import argparse
import json
import time

import torch

from metalens import load_subject
from metalens.autointerp.simulator import TrainedSimulator
from metalens.autointerp.train import first_per_rule, validity
from metalens.io import atomic_write_json, jsonl_objects

ap = argparse.ArgumentParser()
ap.add_argument("--data", required=True)
ap.add_argument("--out", required=True)
ap.add_argument("adapters", nargs="+", help="NAME=DIR")
a = ap.parse_args()
torch.set_num_threads(1)
s = load_subject(device="cpu")
all_held = [o for _, o in jsonl_objects(f"{a.data}/heldout.jsonl")]
held = first_per_rule(all_held)
seen = [o for _, o in jsonl_objects(f"{a.data}/seen_newtext.jsonl")]
pool = [(f["family"], f["explanation"]) for f in held + seen]
fs = first_per_rule(seen)
seen_sub = fs[:: max(1, len(fs) // 20)][:20]
out = {"date": time.strftime("%Y-%m-%d"), "data": a.data, "adapters": {}}
for spec in a.adapters:
    name, path = spec.split("=", 1)
    sim = TrainedSimulator.load(s, path)
    row = {"dir": path, "steps": json.load(open(f"{path}/adapter.json")).get("steps")}
    for key, feats, nw, nc in (("heldout", held, None, 5), ("heldout_all", all_held, None, 5),
                               ("seen_newtext", seen_sub, 6, 3)):
        v = validity(sim, feats, pool, nw, nc, seed=0)
        row[key] = {k: v[k] for k in ("auroc", "mean_true_r", "mean_control_r", "undefined")}
    out["adapters"][name] = row
    print(name, {k: round(row[k]["auroc"], 3) for k in ("heldout", "heldout_all", "seen_newtext")}, flush=True)
atomic_write_json(a.out, out)
