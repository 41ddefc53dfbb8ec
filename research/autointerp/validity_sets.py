"""Simulator validity on held-out sets, one line per rule and every line of a rule, as benchmarks/autointerp.py
measures it (its (a) validity_heldout and validity_heldout_all: the same features, pool and control draws).

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python research/autointerp/validity_sets.py \\
        --simulator research/autointerp/adapters/simulator_stage6 --name stage6 \\
        --set third=runs/third --set first=runs/simdata4 --seen runs/simdata4/seen_newtext.jsonl \\
        --state runs/validity/stage6.json

The control pool is each set's features plus the seen-family features on new text (--seen), as in the
benchmark. Resumable: --state is rewritten atomically after every (set, measure).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from metalens import load_subject
from metalens.autointerp.simulator import TrainedSimulator
from metalens.autointerp.train import first_per_rule, validity
from metalens.io import atomic_write_json, jsonl_objects


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--simulator", default="default", help="adapter folder, or 'default' (the shipped one)")
    ap.add_argument("--name", default="shipped")
    ap.add_argument("--set", action="append", required=True, help="name=folder holding heldout.jsonl (repeatable)")
    ap.add_argument("--seen", required=True, help="seen-family features on new text (the control pool's other half)")
    ap.add_argument("--controls", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--state", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spath = Path(args.state)
    state = json.loads(spath.read_text()) if spath.exists() else {"simulator": args.name}
    s = load_subject(device="cpu")
    sim = TrainedSimulator.load(s, None if args.simulator == "default" else args.simulator)
    seen = [o for _, o in jsonl_objects(Path(args.seen))]
    for spec in args.set:
        name, _, folder = spec.partition("=")
        if not folder:
            raise SystemExit(f"--set {spec!r}: expected name=folder, e.g. third=runs/third")
        all_held = [o for _, o in jsonl_objects(Path(folder) / "heldout.jsonl")]
        held = first_per_rule(all_held)
        pool = [(f["family"], f["explanation"]) for f in held + seen]
        for key, feats in (("one_line", held), ("both_lines", all_held)):
            k = f"{name}/{key}"
            if k not in state:
                state[k] = validity(sim, feats, pool, None, args.controls, seed=0)
                atomic_write_json(spath, state)
            v = state[k]
            print(f"{args.name} {k:18s} AUROC {v['auroc']:.3f}  true r {v['mean_true_r']:.3f}  control r "
                  f"{v['mean_control_r']:.3f}  ({v['n_true']} true, {v['n_controls']} controls, {v['undefined']} undefined)",
                  flush=True)


if __name__ == "__main__":
    main()
