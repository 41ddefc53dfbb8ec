"""Validity of several simulator adapters on the benchmark's sets (the same calls as
benchmarks/autointerp.py part (a)): held-out families (one line per rule, and both lines), training
families on held-out text; and, as a larger and phrasing-robust set, every phrasing of every held-out
rule on both of its lines (each phrasing against the same controls), with a per-family breakdown;
and "listed": each held-out line's explanation replaced by explainer.examples_phrase of its first 6
windows ("words like A, B or C", what the explainer's examples candidate gives SAE latents), scored on
its other 6 windows against the examples phrases of 5 other rules' lines.
Used for the stage-1 / stage-2 / same-steps-without-WordNet, listed-word and LoRA-depth comparisons.

    OMP_NUM_THREADS=1 PYTHONPATH=src python research/autointerp/compare_adapters.py --data runs/simdata3 \
        --out research/autointerp/adapter_comparison.json NAME=DIR [NAME=DIR ...]
"""

import argparse
import json
import time

import numpy as np
import torch

from metalens import load_subject
from metalens.autointerp.explainer import examples_phrase
from metalens.autointerp.simulator import TrainedSimulator
from metalens.autointerp.train import first_per_rule, validity
from metalens.io import atomic_write_json, jsonl_objects
from metalens.metrics import auroc

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
phrasings = [{**f, "id": f"{f['id']}#{i}", "explanation": e} for f in all_held for i, e in enumerate(f["explanations"])]
listed = []
for f in all_held:
    phrase = examples_phrase([(w["tokens"], w["values"]) for w in f["windows"][:6]])
    if phrase:  # a rule's own line is its family for the controls: other rules' lists are the foils
        listed.append({**f, "family": f["family"] + "/" + f["rule"], "explanation": phrase, "windows": f["windows"][6:]})
listed_pool = [(f["family"], f["explanation"]) for f in listed]
KEYS = ("auroc", "mean_true_r", "mean_control_r", "undefined")  # kept of each validity() result
out = {"date": time.strftime("%Y-%m-%d"), "data": a.data, "adapters": {}}
for spec in a.adapters:
    name, path = spec.split("=", 1)
    sim = TrainedSimulator.load(s, path)
    row = {"dir": path, "steps": json.load(open(f"{path}/adapter.json")).get("steps")}
    for key, feats, foils, nw, nc in (("heldout", held, pool, None, 5), ("heldout_all", all_held, pool, None, 5),
                                      ("seen_newtext", seen_sub, pool, 6, 3), ("heldout_listed", listed, listed_pool, None, 5),
                                      ("heldout_phrasings", phrasings, pool, None, 5)):
        v = validity(sim, feats, foils, nw, nc, seed=0)
        row[key] = {k: v[k] for k in KEYS}
    # v is the phrasings set's: broken down per family and per rule
    fam = {f["id"]: (f["family"], f["rule"]) for f in phrasings}
    for group, key in (("per_family", 0), ("per_rule", 1)):
        row[group] = {}
        for g in sorted({x[key] for x in fam.values()}):
            pf = [r for i, r in v["per_feature"].items() if fam[i][key] == g and r["true"] is not None]
            pos, neg = [r["true"] for r in pf], [c for r in pf for c in r["controls"].values() if c is not None]
            row[group][g] = {"auroc": auroc(pos + neg, [1] * len(pos) + [0] * len(neg)) if pos and neg else None,
                             "mean_true_r": float(np.mean(pos)) if pos else None}
    out["adapters"][name] = row
    print(name, {k: round(row[k]["auroc"], 3) for k in ("heldout", "heldout_all", "seen_newtext", "heldout_listed", "heldout_phrasings")}, flush=True)
atomic_write_json(a.out, out)
