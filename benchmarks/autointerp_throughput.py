"""Autointerp part (d) alone: features explained + scored per CPU-minute, trained vs prompted pipeline.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/autointerp_throughput.py --data runs/simdata [--out runs/bench_tp]

The same features, code path (`timed_pipeline`: explain_one, best of k) and settings as part (d) of
benchmarks/autointerp.py, both pipelines in one run: the trained one (shipped explainer + simulator
adapters) and the prompted one (prompted explainer + prompted simulator on the same model). Process CPU
seconds per feature; target: trained >= 10x the prompted features per CPU-minute.
Resumable: every feature checkpoints to --out/state.json under its pipeline's label. `--label` names
the trained entry, so an older checkout put first on PYTHONPATH can be timed into the same state
(e.g. --label trained_before). Writes benchmarks/results/autointerp_throughput.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from autointerp import timed_pipeline
from common import write_result
from metalens import load_subject
from metalens.autointerp.explainer import PromptExplainer, TrainedExplainer
from metalens.autointerp.llm import LocalLLM
from metalens.autointerp.simulator import PromptSimulator, TrainedSimulator
from metalens.autointerp.train import first_per_rule
from metalens.autointerp.trainset import build_trainset
from metalens.io import atomic_write_json, jsonl_objects

ROOT = Path(__file__).parent


def summary(entries: dict) -> dict:
    cpu = sum(e["cpu_s"] for e in entries.values())
    return {"features": len(entries), "cpu_s_per_feature": cpu / len(entries), "features_per_cpu_min": len(entries) / (cpu / 60),
            "per_feature": entries}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="runs/simdata", help="trainset folder (built here if missing)")
    ap.add_argument("--ao", default=None, help="shared data root with classification_datasets/ (to build --data)")
    ap.add_argument("--simulator", default=None, help="simulator adapter folder (default: the shipped one)")
    ap.add_argument("--explainer", default=None, help="explainer adapter folder (default: the shipped one)")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--features", type=int, default=2, help="the first held-out features, one per rule (as part (d))")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--label", default="trained", help="state key of the trained pipeline's timings")
    ap.add_argument("--note", default=None, help="what the --label entry is (kept in the result)")
    ap.add_argument("--skip-prompted", action="store_true", help="time the trained pipeline only")
    ap.add_argument("--out", default=str(ROOT / "results" / "autointerp_throughput_run"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spath = Path(args.out) / "state.json"
    state = json.loads(spath.read_text()) if spath.exists() else {}
    s = load_subject(device="cpu")
    data = Path(args.data)
    if not (data / "heldout.jsonl").exists():
        build_trainset(data, s.tokenizer, args.ao)
    if args.note:
        state.setdefault("notes", {})[args.label] = args.note
        atomic_write_json(spath, state)
    feats = first_per_rule([o for _, o in jsonl_objects(data / "heldout.jsonl")])[: args.features]

    def run(label: str, explainer, simulator) -> None:
        done = state.setdefault(label, {})
        for f in feats:
            if f["id"] in done:
                continue
            row, cpu_s = timed_pipeline(f, explainer, simulator, args.k)
            done[f["id"]] = {"cpu_s": cpu_s, "found": row["explanation"], "score": row["score"],
                             "candidates": row["candidates"]}
            atomic_write_json(spath, state)
            print(f"{label} {f['id']}: {row['explanation']!r} in {cpu_s:.2f} CPU s", flush=True)

    run(args.label, TrainedExplainer.load(s, args.explainer), TrainedSimulator.load(s, args.simulator))
    if not args.skip_prompted:
        run("prompted", PromptExplainer(LocalLLM(s, batch_size=4)), PromptSimulator(LocalLLM(s, batch_size=4)))
    ids = [f["id"] for f in feats]
    pipelines = {label: summary({i: e[i] for i in ids}) for label, e in state.items()
                 if label != "notes" and all(i in e for i in ids)}
    result = {"model": s.name, "k": args.k, "features": ids, "notes": state.get("notes", {}), "pipelines": pipelines}
    if "trained" in pipelines and "prompted" in pipelines:
        result["speedup"] = pipelines["prompted"]["cpu_s_per_feature"] / pipelines["trained"]["cpu_s_per_feature"]
        result["target_10x"] = result["speedup"] >= 10
    if "trained" in pipelines and "trained_before" in pipelines:
        result["trained_speedup_over_before"] = (pipelines["trained_before"]["cpu_s_per_feature"] /
                                                 pipelines["trained"]["cpu_s_per_feature"])
    print({k: (round(v["cpu_s_per_feature"], 2), round(v["features_per_cpu_min"], 2)) for k, v in pipelines.items()},
          result.get("speedup"))
    write_result("autointerp_throughput", result, threads=args.threads)


if __name__ == "__main__":
    main()
