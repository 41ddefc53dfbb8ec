"""Self-training data for the simulator: the rule trainset plus the TRAIN-half SAE latents of
benchmarks/autointerp_latents.py, each explained by the explainer's no-LLM examples phrase
("words like A, B or C": the strongest words of its explain windows, explainer.examples_phrase).

    PYTHONPATH=src python research/autointerp/latent_trainset.py --rules runs/simdata4 \\
        --latents runs/autointerp_latents --out runs/simdata_lat --repeat 2

The TEST-half latents (the ones the latent benchmark scores) are never read: only
train_latents.jsonl and train_latents_unexplained.jsonl, which the benchmark writes for the TRAIN half.
A latent's explanations are its examples phrase with 3 words, with 2 and with 4 (distinct ones only),
and, for the latents the benchmark explained, the explanation its search chose. heldout.jsonl,
seen_newtext.jsonl and meta.json are the rule trainset's, so the learning curve stays comparable.
Each latent line is written `--repeat` times (the rule data has ~77k windows, the latents ~30k).
"""

import argparse
import shutil
from pathlib import Path

from metalens.autointerp.explainer import examples_phrase
from metalens.autointerp.formats import split_windows
from metalens.io import atomic_write_json, jsonl_objects, write_jsonl

ap = argparse.ArgumentParser()
ap.add_argument("--rules", required=True, help="rule trainset folder (trainset.build_trainset)")
ap.add_argument("--latents", required=True, help="autointerp_latents.py --out folder")
ap.add_argument("--out", required=True)
ap.add_argument("--repeat", type=int, default=2)
a = ap.parse_args()

rules, lat, out = Path(a.rules), Path(a.latents), Path(a.out)
out.mkdir(parents=True, exist_ok=True)
lines = [o for _, o in jsonl_objects(rules / "train.jsonl")]
n_rules = len(lines)
latent_lines = []
for name in ("train_latents.jsonl", "train_latents_unexplained.jsonl"):
    for _, o in jsonl_objects(lat / name):
        wins = [(w["tokens"], w["values"]) for w in o["windows"]]
        explain = [wins[i] for i in split_windows(wins)["explain"]]
        expl = list(dict.fromkeys(e for n in (3, 2, 4) if (e := examples_phrase(explain, n=n))))
        if o.get("explanation"):
            expl = [o["explanation"]] + [e for e in expl if e != o["explanation"]]
        if not expl:
            continue
        latent_lines.append({**{k: v for k, v in o.items() if k not in ("explanations", "select_r")},
                             "explanation": expl[0], "explanations": expl, "noisy": False})
lines += latent_lines * a.repeat
write_jsonl(out / "train.jsonl", lines)
for f in ("heldout.jsonl", "seen_newtext.jsonl", "meta.json"):
    shutil.copy(rules / f, out / f)
atomic_write_json(out / "latents.json", {"rule_lines": n_rules, "latent_lines": len(latent_lines),
                                         "repeat": a.repeat, "latents_from": str(lat)})
print(f"{n_rules} rule lines + {len(latent_lines)} latent lines x {a.repeat} -> {out / 'train.jsonl'}")
