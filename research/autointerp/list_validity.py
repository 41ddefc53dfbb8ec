"""Do simulator adapters read explanations that list a feature's strongest words? For every held-out
rule line (heldout.jsonl, families never trained on), the explanation is explainer.examples_phrase of
its first 6 windows ("words like A, B or C"), scored on its other 6 windows against the examples
phrases of 5 other families' lines (train.validity). This is the kind of explanation the explainer's
examples candidate gives SAE latents.

    OMP_NUM_THREADS=1 PYTHONPATH=src python research/autointerp/list_validity.py --data runs/simdata4 \
        --out research/autointerp/list_validity.json NAME=DIR [NAME=DIR ...]
"""

import argparse
import time

import torch

from metalens import load_subject
from metalens.autointerp.explainer import examples_phrase
from metalens.autointerp.simulator import TrainedSimulator
from metalens.autointerp.train import validity
from metalens.io import atomic_write_json, jsonl_objects

ap = argparse.ArgumentParser()
ap.add_argument("--data", required=True)
ap.add_argument("--out", required=True)
ap.add_argument("adapters", nargs="+", help="NAME=DIR")
a = ap.parse_args()
torch.set_num_threads(1)
s = load_subject(device="cpu")
feats = []
for _, f in jsonl_objects(f"{a.data}/heldout.jsonl"):
    phrase = examples_phrase([(w["tokens"], w["values"]) for w in f["windows"][:6]])
    if phrase:
        feats.append({**f, "explanation": phrase, "windows": f["windows"][6:]})
pool = [(f["family"] + "/" + f["rule"], f["explanation"]) for f in feats]
out = {"date": time.strftime("%Y-%m-%d"), "data": a.data, "n_features": len(feats),
       "explanations": {f["id"]: f["explanation"] for f in feats}, "adapters": {}}
for spec in a.adapters:
    name, path = spec.split("=", 1)
    v = validity(TrainedSimulator.load(s, path), [{**f, "family": f["family"] + "/" + f["rule"]} for f in feats],
                 [(fam, e) for fam, e in pool], None, 5, seed=0)
    out["adapters"][name] = {"dir": path, **{k: v[k] for k in ("auroc", "mean_true_r", "mean_control_r", "undefined")}}
    print(name, round(v["auroc"], 3), round(v["mean_true_r"], 3), round(v["mean_control_r"], 3), flush=True)
atomic_write_json(a.out, out)
