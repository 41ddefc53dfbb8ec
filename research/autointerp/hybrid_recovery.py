"""Recovery when the plain reading selects and the examples reading scores.

    OMP_NUM_THREADS=1 PYTHONPATH=src:benchmarks .venv/bin/python research/autointerp/hybrid_recovery.py \\
        --data runs/simdata4 --state runs/bench_cat_plain/state.json --out research/autointerp/hybrid_recovery.json

Reads a plain-reading run of benchmarks/autointerp.py (its found explanations, chosen by the plain
reading on the select windows) and scores each found explanation and the truth on the same test windows
with the shipped simulator read with examples (simulator.TrainedSimulator.load(..., examples=True)):
recovery = r(found) / r(truth), both read with examples. Process CPU seconds of the examples scoring
are recorded (what scoring the chosen explanation with examples adds per feature).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from autointerp import merged_per_rule, recovery_ratio, recovery_summary
from metalens import load_subject
from metalens.autointerp.explainer import simulation_r
from metalens.autointerp.formats import split_windows
from metalens.autointerp.simulator import TrainedSimulator
from metalens.autointerp.train import first_per_rule
from metalens.io import atomic_write_json, jsonl_objects


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="runs/simdata4")
    ap.add_argument("--state", required=True, help="state.json of a plain-reading benchmarks/autointerp.py run")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    state = json.loads(Path(args.state).read_text())
    held = [o for _, o in jsonl_objects(Path(args.data) / "heldout.jsonl")]
    sim = TrainedSimulator.load(load_subject(device="cpu"), examples=True)
    result = {"state": args.state, "simulator": sim.name}
    for key, feats in (("recovery", first_per_rule(held)), ("recovery_all_lines", merged_per_rule(held))):
        rows = {}
        for f in feats:
            got = state[key][f["id"]]
            wins = [(w["tokens"], w["values"]) for w in f["windows"]]
            test = [wins[i] for i in split_windows(wins)["test"]]
            c0 = time.process_time()
            found_r = simulation_r(sim, got["found"], test) if got["found"] else None
            cpu_s = time.process_time() - c0
            true_r = simulation_r(sim, f["explanation"], test)
            ratio = recovery_ratio(found_r, true_r)
            rows[f["id"]] = {"truth": f["explanation"], "found": got["found"], "found_r": found_r, "true_r": true_r,
                             "recovery": ratio, "plain_found_r": got["found_r"], "plain_true_r": got["true_r"],
                             "cpu_s_found": cpu_s}
            print(f"{key} {f['rule']:18s} {got['found']!r}: {found_r} / {true_r} = {ratio}")
        result[key] = {**recovery_summary(rows), "per_feature": rows}
        print(key, {k: v for k, v in result[key].items() if k != "per_feature"})
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
