"""Does the simulator read a category better when the explanation comes with examples the subject
model itself writes (simulator.example_words)? Each explanation, true and control alike, is read as
"<explanation> (USA, Canada, Germany, ...)". Scored on the benchmark's sets with the same seeds as
compare_adapters.py, beside the plain explanations, for each adapter.

    OMP_NUM_THREADS=1 PYTHONPATH=src python research/autointerp/expand_validity.py --data runs/simdata4 \\
        --out research/autointerp/expand_validity.json NAME=DIR [NAME=DIR ...]
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
phrasings = [{**f, "id": f"{f['id']}#{i}", "explanation": e} for f in all_held for i, e in enumerate(f["explanations"])]
rules = {f["id"]: f["rule"] for f in phrasings}
KEYS = ("auroc", "mean_true_r", "mean_control_r", "undefined")
out = {"date": time.strftime("%Y-%m-%d"), "data": a.data, "adapters": {}}
for spec in a.adapters:
    name, path = spec.split("=", 1)
    row = {"dir": path, "steps": json.load(open(f"{path}/adapter.json")).get("steps")}
    for reading in ("plain", "examples"):
        sim = TrainedSimulator.load(s, path, examples=reading == "examples")
        r = row[reading] = {}
        for key, feats, nw, nc in (("heldout", held, None, 5), ("heldout_all", all_held, None, 5),
                                   ("seen_newtext", seen_sub, 6, 3), ("heldout_phrasings", phrasings, None, 5)):
            t = time.process_time()
            v = validity(sim, feats, pool, nw, nc, seed=0)
            r[key] = {k: v[k] for k in KEYS} | {"cpu_s": round(time.process_time() - t, 1)}
        xs = {}
        for i, x in v["per_feature"].items():  # v: the phrasings set's, per rule
            if x["true"] is not None:
                xs.setdefault(rules[i], []).append(x["true"])
        r["per_rule_true_r"] = {k: round(sum(x) / len(x), 3) for k, x in sorted(xs.items())}
        if sim.examples is not None:
            out["examples"] = dict(sorted(sim.examples.items()))
        print(name, reading, {k: round(r[k]["auroc"], 3) for k in ("heldout", "heldout_all", "seen_newtext",
                                                                    "heldout_phrasings")}, flush=True)
    out["adapters"][name] = row
    atomic_write_json(a.out, out)
