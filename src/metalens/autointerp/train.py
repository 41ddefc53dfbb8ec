"""Training the simulator (and the explainer, explainer.py) on rule data with known answers (trainset.py).

    python -m metalens.autointerp.train sim --data runs/simdata --out runs/sim1 --steps 1500

LoRA (metalens.adapters.add_lora) on the subject model, trainable from layer `first_layer` up: the
layers below run without a graph, so a step costs about one forward pass plus the top layers'
backward. Loss: cross-entropy of the 11 value logits against the binned value (round(10 * v /
scale)) at every window token. Resumable: every `checkpoint_s` seconds out/ckpt/ gets the LoRA
tensors and AdamW's moments (safetensors) and the step counter (JSON); running again continues.
A learning curve goes to out/curve.jsonl: training loss, and every `eval_every` steps the validity
AUROC on held-out families (the true explanation's r against other families' explanations).
The finished adapter is written to out/final/ as fp16 safetensors + adapter.json.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..io import atomic_write_bytes, atomic_write_json, jsonl_objects, write_jsonl
from ..metrics import auroc, pearson
from ..adapters import add_lora_for, copy_lora_weights, lora_state, save_lora
from .simulator import Encoder, TrainedSimulator, example_words, value_logits, value_token_ids, with_examples


@dataclass(frozen=True)
class TrainConfig:
    """One LoRA training run (simulator or explainer)."""

    data: str
    """folder written by trainset.build_trainset"""
    out: str
    """run folder (checkpoints, curve.jsonl, final/)"""
    task: str = "simulator"
    """simulator | explainer"""
    rank: int = 8
    """LoRA rank"""
    alpha: int = 16
    """LoRA alpha"""
    first_layer: int = 18
    """LoRA is trained on this layer and above (lower ones stay at zero)"""
    lr: float = 1e-3
    """AdamW learning rate (linear warm-up, then constant)"""
    warmup: int = 30
    """warm-up steps"""
    batch: int = 12
    """windows (simulator) or prompts (explainer) per step"""
    crop: int = 24
    """simulator: each training window is a random crop of at most this many tokens"""
    steps: int = 1500
    """total steps"""
    checkpoint_s: float = 240.0
    """seconds between checkpoints"""
    eval_every: int = 150
    """steps between held-out evaluations (simulator)"""
    eval_windows: int = 6
    """windows per held-out feature in the curve's evaluation"""
    eval_controls: int = 3
    """other families' explanations per held-out feature in the curve's evaluation"""
    seed: int = 0
    """sampling seed"""
    base_model: str = ""
    """name of the subject model (recorded)"""
    init: str = ""
    """adapter folder to start from (a finished run's final/ or a shipped adapter; same rank and alpha, its
    first layer at or above this run's: layers it lacks start at zero LoRA B); "" = zero LoRA B"""
    contrast: bool = True
    """simulator: also train on the contrast rule of each window (trainset's module doc)"""
    examples: float = 0.0
    """simulator: share of training rows whose explanation is read with the base model's examples
    (simulator.py's module doc; written once to data/examples.json); > 0 makes the adapter read
    explanations with examples (its adapter.json says "examples": true) and the curve evaluates so"""


# ---- data -----------------------------------------------------------------------------------------
def bins(values: Sequence[float], scale: float) -> np.ndarray:
    """Values -> integer bins 0..10 (normalised by the feature's scale; negative values -> 0)."""
    if scale <= 0:
        return np.zeros(len(values), dtype=np.int64)
    return np.clip(np.round(10 * np.asarray(values, np.float64) / scale), 0, 10).astype(np.int64)


def load_windows(path: str | Path, contrast: bool = True) -> list[tuple[list[str], list[str], np.ndarray]]:
    """(explanations, tokens, bins) of every window of every feature line, and of its contrast rule on
    the same tokens when the line has one (trainset's module doc)."""
    out = []
    for where, obj in jsonl_objects(path):
        for w in obj["windows"]:
            out.append((obj["explanations"], w["tokens"], bins(w["values"], obj["scale"])))
            c = w.get("contrast") if contrast else None
            if c:
                out.append((c["explanations"], w["tokens"], bins(c["values"], c["scale"])))
    return out


# ---- evaluation -----------------------------------------------------------------------------------
def validity(sim, features: Sequence[dict], pool: Sequence[tuple[str, str]], n_windows: int | None = None,
             n_controls: int = 5, seed: int = 0) -> dict:
    """AUROC of each feature's true explanation r against the r of `n_controls` explanations drawn from
    `pool` ((family, explanation) pairs) of other families. Undefined r (constant predictions) is left
    out and counted."""
    rng = np.random.default_rng(seed)
    pos, neg, rows, undefined = [], [], {}, 0
    for f in features:
        wins = f["windows"][:n_windows] if n_windows else f["windows"]
        toks, true = [w["tokens"] for w in wins], np.concatenate([w["values"] for w in wins])
        others = sorted({e for fam, e in pool if fam != f["family"]})
        ctrl = [others[i] for i in rng.choice(len(others), size=min(n_controls, len(others)), replace=False)]
        r = {e: pearson(np.concatenate(sim.simulate(e, toks)), true) for e in [f["explanation"], *ctrl]}
        undefined += sum(v is None for v in r.values())
        rt = r[f["explanation"]]
        if rt is not None:
            pos.append(rt)
        neg += [v for e, v in r.items() if e != f["explanation"] and v is not None]
        rows[f["id"]] = {"true": rt, "controls": {e: r[e] for e in ctrl}}
    a = auroc(pos + neg, [1] * len(pos) + [0] * len(neg))
    return {"auroc": a, "n_true": len(pos), "n_controls": len(neg), "undefined": undefined,
            "mean_true_r": float(np.mean(pos)) if pos else None, "mean_control_r": float(np.mean(neg)) if neg else None,
            "per_feature": rows}


def first_per_rule(features: Sequence[dict]) -> list[dict]:
    seen, out = set(), []
    for f in features:
        if f["rule"] not in seen:
            seen.add(f["rule"])
            out.append(f)
    return out


# ---- checkpoints ------------------------------------------------------------------------------------
def save_checkpoint(model, opt: torch.optim.Optimizer, step: int, path: Path, extra: dict) -> None:
    """LoRA tensors + AdamW moments as safetensors, the counters as JSON (no pickles)."""
    from safetensors.torch import save

    names = {id(p): n for n, p in model.named_parameters()}
    tensors, steps = {}, {}
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p, {})
            n = names[id(p)]
            if "exp_avg" in st:
                tensors[f"{n}::exp_avg"] = st["exp_avg"].contiguous()
                tensors[f"{n}::exp_avg_sq"] = st["exp_avg_sq"].contiguous()
                steps[n] = float(st["step"])
    atomic_write_bytes(path / "lora.safetensors", save({n: t.contiguous() for n, t in lora_state(model).items()}))
    atomic_write_bytes(path / "optim.safetensors", save(tensors))
    atomic_write_json(path / "state.json", {"step": step, "adam_steps": steps, **extra})


def load_checkpoint(model, opt: torch.optim.Optimizer, path: Path) -> dict:
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text())
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in load_file(str(path / "lora.safetensors")).items():
            params[n].copy_(t)
    moments = load_file(str(path / "optim.safetensors"))
    for n, s in state["adam_steps"].items():
        opt.state[params[n]] = {"step": torch.tensor(s), "exp_avg": moments[f"{n}::exp_avg"],
                                "exp_avg_sq": moments[f"{n}::exp_avg_sq"]}
    return state


def example_map(model, tokenizer, explanations: Sequence[str], path: str | Path, chunk: int = 64) -> dict[str, list[str]]:
    """Base-model examples (simulator.example_words) of every explanation, kept in `path` (JSON):
    those already there are reused, the rest are written `chunk` at a time (an interrupted run
    resumes)."""
    from tqdm.auto import tqdm

    path = Path(path)
    ex = json.loads(path.read_text()) if path.exists() else {}
    todo = sorted(set(explanations) - set(ex))
    for b in tqdm(range(0, len(todo), chunk), desc="examples", disable=not todo):
        ex.update(zip(todo[b : b + chunk], example_words(model, tokenizer, todo[b : b + chunk])))
        atomic_write_json(path, ex)
    return ex


# ---- training ---------------------------------------------------------------------------------------
def sim_batch(enc: Encoder, data, idx, rng, crop: int, examples: dict[str, list[str]] | None = None,
              share: float = 0.0) -> tuple:
    """A batch of (random phrasing, random crop of the window) and the crops' target bins; with
    `share` > 0, that share of the rows reads its phrasing with its examples."""
    rows, targets = [], []
    for i in idx:
        expls, toks, b = data[i]
        s = int(rng.integers(0, max(1, len(toks) - crop + 1)))
        e = expls[rng.integers(len(expls))]
        if share > 0 and rng.random() < share:
            e = with_examples(e, examples[e])
        rows.append((e, toks[s : s + crop]))
        targets.append(b[s : s + crop])
    return enc.batch(rows), torch.from_numpy(np.concatenate(targets))


def train(cfg: TrainConfig, subject) -> Path:
    """Train (or resume) and write out/final/; returns that folder."""
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    ckpt = out / "ckpt"
    lcfg = {"rank": cfg.rank, "alpha": cfg.alpha, "first_layer": cfg.first_layer, "seed": cfg.seed,
            "task": cfg.task, "base_model": cfg.base_model or subject.name}
    if cfg.task == "simulator":
        data = load_windows(Path(cfg.data) / "train.jsonl", cfg.contrast)
        held = [o for _, o in jsonl_objects(Path(cfg.data) / "heldout.jsonl")]
        seen = [o for _, o in jsonl_objects(Path(cfg.data) / "seen_newtext.jsonl")]
        pool = [(f["family"], f["explanation"]) for f in held + seen]
        held_eval = first_per_rule(held)
        examples = None
        if cfg.examples > 0:  # before the LoRA goes in: the examples are the base model's
            lcfg["examples"] = True
            examples = example_map(subject.model, subject.tokenizer, [e for d in data for e in d[0]] +
                                   [e for _, e in pool], Path(cfg.data) / "examples.json")
    else:
        from .explainer import load_explainer_data

        data = load_explainer_data(Path(cfg.data) / "train.jsonl")
    model = add_lora_for(subject.model, lcfg)
    if cfg.init:
        init = json.loads((Path(cfg.init) / "adapter.json").read_text())
        if (init["rank"], init["alpha"]) != (cfg.rank, cfg.alpha) or init["first_layer"] < cfg.first_layer:
            raise ValueError(f"--init {cfg.init}: rank {init['rank']}, alpha {init['alpha']}, first layer "
                             f"{init['first_layer']}; this run has rank {cfg.rank}, alpha {cfg.alpha}, first layer "
                             f"{cfg.first_layer} (rank and alpha must match; the run may train more layers than the "
                             f"adapter, never fewer)")
        copy_lora_weights(model, Path(cfg.init) / "adapter.safetensors", init.get("base_model", "another model"))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    enc = Encoder(subject.tokenizer)
    value_ids = value_token_ids(subject.tokenizer)
    step, curve = 0, []
    if (ckpt / "state.json").exists():
        st = load_checkpoint(model, opt, ckpt)
        same = lambda c: {k: v for k, v in c.items() if k != "steps"}  # noqa: E731  (more steps may be asked)
        if same(st["config"]) != same(json.loads(json.dumps(asdict(cfg)))):
            raise ValueError(f"{ckpt} was written by a different config; use a new --out")
        step = st["step"]
        curve = [obj for _, obj in jsonl_objects(out / "curve.jsonl")] if (out / "curve.jsonl").exists() else []
        curve = [c for c in curve if c["step"] <= step]
    atomic_write_json(out / "config.json", asdict(cfg))
    last_ckpt, t0, ema = time.time(), time.time(), None

    def evaluate() -> dict:
        model.eval()
        sim = TrainedSimulator(model, subject.tokenizer, "training", examples=examples)
        v = validity(sim, held_eval, pool, cfg.eval_windows, cfg.eval_controls, seed=1)
        model.train()
        return {k: v[k] for k in ("auroc", "mean_true_r", "mean_control_r", "undefined")}

    if cfg.task == "simulator" and step == 0 and cfg.eval_every:
        curve.append({"step": 0, "loss": None, **evaluate(), "seconds": 0.0})
        write_jsonl(out / "curve.jsonl", curve)
    model.train()
    while step < cfg.steps:
        rng = np.random.default_rng([cfg.seed, step])
        idx = rng.choice(len(data), size=cfg.batch, replace=False)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup)
        if cfg.task == "simulator":
            batch, target = sim_batch(enc, data, idx, rng, cfg.crop, examples, cfg.examples)
            logits = torch.cat(value_logits(model, batch, value_ids))  # [n_tokens, 11]
            loss = torch.nn.functional.cross_entropy(logits.float(), target)
        else:
            from .explainer import explainer_batch, explainer_loss

            loss = explainer_loss(model, *explainer_batch(subject.tokenizer, [data[i] for i in idx], rng))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        row = None
        if cfg.task == "simulator" and cfg.eval_every and step % cfg.eval_every == 0:
            row = {"step": step, "loss": ema, **evaluate()}
        elif step % 25 == 0:
            row = {"step": step, "loss": ema}
        if row is not None:
            row["seconds"] = round(time.time() - t0, 1)
            curve.append(row)
            write_jsonl(out / "curve.jsonl", curve)
            print(json.dumps(row), flush=True)
        if time.time() - last_ckpt > cfg.checkpoint_s or step == cfg.steps:
            save_checkpoint(model, opt, step, ckpt, {"config": asdict(cfg)})
            last_ckpt = time.time()
    final = out / "final"
    save_lora(model, final, {**lcfg, "steps": step, "train_config": asdict(cfg)})
    return final


def export_checkpoint(run: str | Path, dest: str | Path) -> Path:
    """Write the run's last checkpoint as a shippable adapter (fp16 safetensors + adapter.json)."""
    from safetensors.torch import load_file, save

    run, dest = Path(run), Path(dest)
    cfg = json.loads((run / "config.json").read_text())
    state = json.loads((run / "ckpt" / "state.json").read_text())
    tensors = {n: t.half().contiguous() for n, t in load_file(str(run / "ckpt" / "lora.safetensors")).items()}
    atomic_write_bytes(dest / "adapter.safetensors", save(tensors))
    atomic_write_json(dest / "adapter.json", {"rank": cfg["rank"], "alpha": cfg["alpha"], "first_layer": cfg["first_layer"],
                                              "seed": cfg["seed"], "task": cfg["task"], "base_model": cfg["base_model"],
                                              **({"examples": True} if cfg.get("examples", 0) > 0 else {}),
                                              "steps": state["step"], "train_config": cfg})
    return dest


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m metalens.autointerp.train")
    ap.add_argument("task", choices=["simulator", "explainer"])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    for f in ("rank", "alpha", "first_layer", "warmup", "batch", "crop", "steps", "eval_every", "eval_windows", "seed"):
        ap.add_argument(f"--{f.replace('_', '-')}", type=int, default=getattr(TrainConfig, f))
    ap.add_argument("--lr", type=float, default=TrainConfig.lr)
    ap.add_argument("--examples", type=float, default=TrainConfig.examples,
                    help="simulator: share of rows read with the base model's examples")
    ap.add_argument("--checkpoint-s", type=float, default=TrainConfig.checkpoint_s)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--init", default="", help="adapter folder to start from")
    ap.add_argument("--no-contrast", action="store_true", help="ignore the windows' contrast rules")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from ..models import load_subject

    subject = load_subject(device="cpu")
    cfg = TrainConfig(data=a.data, out=a.out, task=a.task, rank=a.rank, alpha=a.alpha, first_layer=a.first_layer,
                      lr=a.lr, warmup=a.warmup, batch=a.batch, crop=a.crop, steps=a.steps, checkpoint_s=a.checkpoint_s,
                      eval_every=a.eval_every, eval_windows=a.eval_windows, seed=a.seed, base_model=subject.name,
                      init=a.init, contrast=not a.no_contrast, examples=a.examples)
    print(train(cfg, subject))


if __name__ == "__main__":
    main()
