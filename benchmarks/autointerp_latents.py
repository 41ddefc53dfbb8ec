"""Validity of the trained autointerp scorers on real features: latents of an SAE trained on the default model.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/autointerp_latents.py --out runs/autointerp_latents \\
        --ao /path/to/shared/data/ao
    # rerun with new adapters: the SAE, the pool and the windows are reused; only explain + validity run again
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/autointerp_latents.py --out runs/autointerp_latents \\
        --ao /path/to/shared/data/ao --simulator runs/sim3/final --explainer runs/exp3/final

Stages, each checkpointed under --out (a rerun skips what is done):
  1. sae       capture --site on ~--train-tokens tokens of offline text (news snippets, CPython's docs,
               common-sense claims, hand-written sentences; texts shuffled by --seed, the first ones set
               apart as a held-out pool) and train a TopK SAE on them with metalens.sae -> out/sae/
  2. pool      the held-out pool (~--pool-tokens) captured and encoded by the SAE; the k kept latents of
               every token -> out/pool.safetensors
  3. windows   latents that are alive and neither too dense nor too sparse on the pool, split by --seed
               into TRAIN and TEST halves; per latent --top top-activating windows of 32 tokens, --low
               windows where it fires weakly and --random random ones (mostly zero) -> out/windows.jsonl
  4. explain   per (simulator, explainer) pair, keyed by adapter folder name + weights hash (and a hash
               of explainer.py, simulator.py and formats.py, whose changes also change the results): the best-of-k
               explanation of each of the first --n-test TEST latents (and --n-train TRAIN latents) by
               the trained explainer (k = --k-explain), selected by the trained simulator
               (formats.explain_one: it splits the windows into explain / select / test parts itself)
  5. validity  per TEST latent, the r of its own explanation on its test windows against the r of
               --controls other TEST latents' explanations on the same windows (autointerp.train.validity,
               one family per latent); AUROC over all (true, control) pairs; undefined r counted, left out
  6. baseline  the same validity with the prompted simulator (few-shot, same model) and with the trained
               one on a subset (--prompt-latents latents, --prompt-windows windows, 3 controls); and the
               trained simulator's validity with no-LLM explanations listing the peak tokens of the
               explain windows (words like "a", "b" or "c"): is the explainer or the simulator short?
Writes out/train_latents.jsonl (the explained TRAIN latents as trainset feature lines, usable for
self-training; `select_r` gives each candidate's r on the select windows), out/train_latents_unexplained.jsonl
(the rest of the TRAIN split, windows only) and benchmarks/results/autointerp_latents.json.
Target: validity AUROC >= 0.85.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from common import write_result
from metalens import capture, load_subject
from metalens.autointerp.explainer import TrainedExplainer
from metalens.autointerp.formats import explain_one
from metalens.autointerp.llm import LocalLLM
from metalens.autointerp.simulator import DEFAULT_DIR, PromptSimulator, TrainedSimulator
from metalens.autointerp.train import validity
from metalens.autointerp.trainset import text_sources
from metalens.io import atomic_write_json, jsonl_objects, pydoc_texts, write_jsonl
from metalens.metrics import mean_defined
from metalens.sae.io import load_sae
from metalens.sae.train import SaeTrainConfig, train_sae

WINDOW = 32  # tokens per window
MIN_WINDOW = 8  # shorter tail windows are dropped


# ---- helpers (pure, unit-tested in tests/test_autointerp_latents.py) -------------------------------------
def corpus(data_dir: str | None, seed: int) -> list[str]:
    """Offline texts, shuffled by seed: news snippets and claims (when data_dir has them), CPython's docs,
    hand-written sentences; duplicates dropped."""
    src = text_sources(data_dir, n_pydoc=0)
    texts = src["news"] + pydoc_texts() + src["claims"] + src["sentences"]
    texts = list(dict.fromkeys(t for t in texts if t.strip()))
    order = np.random.default_rng(seed).permutation(len(texts))
    return [texts[i] for i in order]


def take_tokens(tokenizer, texts: Sequence[str], n_tokens: int, max_length: int) -> int:
    """How many texts from the start hold about n_tokens tokens (each cut to max_length)."""
    total = 0
    for i, t in enumerate(texts):
        if total >= n_tokens:
            return i
        total += min(max_length, len(tokenizer(t, add_special_tokens=False)["input_ids"]))
    return len(texts)


def window_ids(text_idx: torch.Tensor, positions: torch.Tensor, window: int = WINDOW,
               min_window: int = MIN_WINDOW) -> torch.Tensor:
    """[n_rows] window index of each captured row, -1 for rows in no window: position 0 (the attention
    sink) and tails shorter than min_window. Windows tile each text from position 1 on, in row order."""
    chunk = torch.where(positions > 0, (positions - 1) // window, torch.full_like(positions, -1))
    key = text_idx * 1_000_000 + chunk
    size = Counter(key[chunk >= 0].tolist())
    ids, out = {}, torch.full_like(positions, -1)
    for r, k in enumerate(key.tolist()):
        if chunk[r] >= 0 and size[k] >= min_window:
            out[r] = ids.setdefault(k, len(ids))
    return out


def window_max(wid: torch.Tensor, idx: torch.Tensor, vals: torch.Tensor, width: int) -> torch.Tensor:
    """[n_windows, width] max activation of every latent in every window from sparse codes
    (idx, vals [n_rows, k]); rows with wid -1 are skipped."""
    keep = wid >= 0
    n_win = int(wid.max()) + 1 if keep.any() else 0
    w = wid[keep][:, None].expand(-1, idx.shape[1])  # [n, k]
    flat = (w * width + idx[keep].long()).reshape(-1)
    out = torch.zeros(n_win * width)
    out.scatter_reduce_(0, flat, vals[keep].float().reshape(-1).clamp_min(0), reduce="amax")
    return out.view(n_win, width)


def pick_windows(wmax: np.ndarray, n_top: int, n_low: int, n_random: int, rng: np.random.Generator,
                 low_below: float = 0.4) -> list[int]:
    """Window indices for one latent: the n_top with the highest max, n_low where it fires at most
    low_below x its top max (but fires), n_random drawn uniformly from the rest."""
    order = np.argsort(-wmax, kind="stable")
    top = [int(i) for i in order[:n_top] if wmax[i] > 0]
    rest = np.setdiff1d(np.arange(len(wmax)), top)
    low_pool = rest[(wmax[rest] > 0) & (wmax[rest] <= low_below * wmax[order[0]])]
    low = [int(i) for i in rng.choice(low_pool, size=min(n_low, len(low_pool)), replace=False)]
    rest = np.setdiff1d(rest, low)
    rand = [int(i) for i in rng.choice(rest, size=min(n_random, len(rest)), replace=False)]
    return top + low + rand


def feature_line(latent: int, site: str, wins: list[dict], scale: float, found: dict | None) -> dict:
    """A trainset feature line (trainset.py) for a latent: its own family; `explanation` the one the
    search chose, `explanations` it plus the other candidates (best first) and `select_r` their r on
    the select windows (null: undefined), so a self-training run can keep only the good ones."""
    line = {"id": f"latent/{latent}", "rule": f"sae:{site}:{latent}", "family": f"latent{latent}", "scale": scale,
            "windows": wins}
    if found and found.get("explanation"):
        cands = sorted(found["candidates"], key=lambda c: -(c["select_r"] if c["select_r"] is not None else -2))
        cands = [c for c in cands if c["text"] == found["explanation"]] + [c for c in cands
                                                                           if c["text"] != found["explanation"]]
        line["explanation"] = found["explanation"]
        line["explanations"] = [c["text"] for c in cands]
        line["select_r"] = [c["select_r"] for c in cands]
    return line


def token_list_explanation(wins: list[dict], n: int = 3) -> str | None:
    """A no-LLM explanation from the peak tokens of the given windows: 'words like "a", "b" or "c"'."""
    seen: dict[str, str] = {}
    for t in top_tokens(wins, n=len(wins)):
        t = t.strip()
        if t and t.lower() not in seen:
            seen[t.lower()] = t
    words = [f'"{t}"' for t in list(seen.values())[:n]]
    if not words:
        return None
    return "words like " + (words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1])


def adapter_key(path: str | None, which: str) -> tuple[Path, str]:
    """(folder, "name@hash8"): the hash of its weights, so two runs of the same name do not collide; "+examples"
    when its adapter.json makes the simulator read explanations with examples (the same weights read otherwise)."""
    d = Path(path) if path else DEFAULT_DIR / which
    h = hashlib.sha256((d / "adapter.safetensors").read_bytes()).hexdigest()[:8]
    name = "shipped" if not path else d.name if d.name not in ("final", which) else f"{d.parent.name}/{d.name}"
    examples = "+examples" if json.loads((d / "adapter.json").read_text()).get("examples") else ""
    return d, f"{name}{examples}@{h}"


def code_key() -> str:
    """Hash of the scorers' code (explainer, simulator, formats): a change there also makes new explanations."""
    src = Path(DEFAULT_DIR).parent
    return hashlib.sha256(b"".join((src / f).read_bytes() for f in ("explainer.py", "simulator.py", "formats.py"))
                          ).hexdigest()[:8]


def top_tokens(wins: list[dict], n: int = 6) -> list[str]:
    """The tokens at the peak of each top window, most common first."""
    peaks = [w["tokens"][int(np.argmax(w["values"]))] for w in wins if max(w["values"]) > 0]
    return [t for t, _ in Counter(peaks).most_common(n)]


# ---- stages -------------------------------------------------------------------------------------------
def stage_sae(args, s, texts: list[str], n_pool: int, state: dict, save) -> None:
    out = Path(args.out) / "sae"
    if (out / "sae_weights.safetensors").exists():
        return
    c0 = time.process_time()
    train_texts = texts[n_pool:]
    n = take_tokens(s.tokenizer, train_texts, args.train_tokens, args.max_length)
    print(f"[sae] capturing {args.site} on {n} texts (~{args.train_tokens} tokens)", flush=True)
    acts = capture(s, sorted(train_texts[:n], key=len), args.site, max_length=args.max_length, dtype=torch.float16,
                   progress=True)
    x = acts[args.site][acts.positions > 0]  # [n_rows, d]; the attention sink left out
    c1 = time.process_time()
    print(f"[sae] {len(x)} rows captured in {c1 - c0:.0f} CPU s; training", flush=True)
    cfg = SaeTrainConfig(out=str(out), site=args.site, k=args.k, width=args.width, batch_size=args.batch,
                         steps=args.steps, log_every=50)
    del acts
    sae = train_sae(cfg, x, model_name=s.name, progress=True)
    log = json.loads((out / "train_log.json").read_text())
    state["sae"] = {"config": asdict(cfg), "train_texts": n, "train_rows": len(x), "final_log": log[-1],
                    "cpu_s": {"capture": c1 - c0, "train": time.process_time() - c1}}
    save()
    del sae


def stage_pool(args, s, texts: list[str], n_pool: int, state: dict, save) -> dict[str, torch.Tensor]:
    path = Path(args.out) / "pool.safetensors"
    if path.exists():
        return load_file(path)
    c0 = time.process_time()
    sae = load_sae(Path(args.out) / "sae")
    print(f"[pool] capturing {n_pool} held-out texts", flush=True)
    acts = capture(s, texts[:n_pool], args.site, max_length=args.max_length, progress=True)
    x = acts[args.site]
    idx, vals = [], []
    with torch.no_grad():
        for i in range(0, len(x), 2048):
            pre = sae.pre_acts(x[i : i + 2048])  # [rows, width]
            v, j = pre.topk(sae.cfg.k, dim=1)  # TopK: the kept latents (encode keeps the same ones)
            idx.append(j.to(torch.int32))
            vals.append(v.clamp_min(0))
    pool = {"idx": torch.cat(idx), "vals": torch.cat(vals), "token_ids": acts.token_ids, "text_idx": acts.text_idx,
            "positions": acts.positions}
    save_file(pool, str(path))
    state["pool"] = {"texts": n_pool, "rows": len(x), "cpu_s": time.process_time() - c0}
    save()
    return pool


def stage_windows(args, s, pool: dict, state: dict, save) -> dict[int, dict]:
    path = Path(args.out) / "windows.jsonl"
    if path.exists():
        return {o["latent"]: o for _, o in jsonl_objects(path)}
    c0 = time.process_time()
    width = state["sae"]["config"]["width"] if "sae" in state else load_sae(Path(args.out) / "sae").cfg.width
    wid = window_ids(pool["text_idx"], pool["positions"])
    wmax = window_max(wid, pool["idx"], pool["vals"], width).numpy()  # [n_windows, width]
    n_win, n_rows = wmax.shape[0], int((wid >= 0).sum())
    in_win = (wid >= 0)[:, None].expand_as(pool["idx"])
    fires = torch.bincount(pool["idx"][in_win & (pool["vals"] > 0)].long(), minlength=width).numpy()
    density = fires / n_rows
    active_windows = (wmax > 0).sum(0)
    ok = ((density >= args.min_density) & (density <= args.max_density) & (active_windows >= args.top + args.low)
          & (active_windows <= args.max_window_share * n_win))
    eligible = np.nonzero(ok)[0]
    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(eligible)
    test, train = sorted(perm[: len(perm) // 2].tolist()), sorted(perm[len(perm) // 2 :].tolist())
    split = {int(lat): "test" for lat in test} | {int(lat): "train" for lat in train}
    print(f"[windows] {n_win} windows, {int((active_windows > 0).sum())}/{width} latents alive on the pool, "
          f"{len(eligible)} eligible (density {args.min_density}..{args.max_density}): {len(test)} test, "
          f"{len(train)} train", flush=True)

    rows_of: dict[int, list[int]] = {}
    for r, w in enumerate(wid.tolist()):
        if w >= 0:
            rows_of.setdefault(w, []).append(r)
    tok_cache: dict[int, str] = {}
    ids = pool["token_ids"].tolist()

    def tok(i: int) -> str:
        if i not in tok_cache:
            tok_cache[i] = s.tokenizer.decode([i])
        return tok_cache[i]

    lines = []
    for lat in perm.tolist():  # the permuted order: "the first N test latents" is a random sample
        chosen = pick_windows(wmax[:, lat], args.top, args.low, args.random, np.random.default_rng([args.seed, lat]))
        wins = []
        for w in chosen:
            rows = torch.tensor(rows_of[w])
            v = (pool["vals"][rows] * (pool["idx"][rows] == lat)).sum(1)  # [len]
            wins.append({"tokens": [tok(ids[r]) for r in rows.tolist()], "values": [round(float(a), 4) for a in v]})
        lines.append({"latent": int(lat), "split": split[int(lat)], "density": float(density[lat]),
                      "active_windows": int(active_windows[lat]), "scale": float(wmax[:, lat].max()), "windows": wins})
    write_jsonl(path, lines)
    state["windows"] = {"n_windows": n_win, "rows": n_rows, "alive": int((active_windows > 0).sum()),
                        "eligible": len(eligible), "test": len(test), "train": len(train),
                        "cpu_s": time.process_time() - c0}
    save()
    return {o["latent"]: o for o in lines}


def explain_latents(ids: list[int], lines: dict, ex, sim, k: int, done: dict, save, tag: str) -> None:
    for n, lat in enumerate(ids):
        if str(lat) in done:
            continue
        wins = [(w["tokens"], w["values"]) for w in lines[lat]["windows"]]
        c0 = time.process_time()
        row = explain_one(str(lat), wins, ex, sim, k=k, seed=0)
        row["cpu_s"] = time.process_time() - c0
        done[str(lat)] = row
        save()
        print(f"[explain {tag} {n + 1}/{len(ids)}] latent {lat} ({', '.join(map(repr, top_tokens(lines[lat]['windows'])[:3]))}"
              f"): {row['explanation']!r} test r={row['score']} ({row['cpu_s']:.1f} CPU s)", flush=True)


def test_features(lines: dict, found: dict, ids: list[int], token_list: bool = False) -> list[dict]:
    """validity()'s feature dicts: the latent's own explanation (or its token-list explanation, made from
    the explain windows) and its TEST windows."""
    out = []
    for lat in ids:
        row = found.get(str(lat))
        if row and row["explanation"]:
            wins = lines[lat]["windows"]
            e = token_list_explanation([wins[i] for i in row["split"]["explain"]]) if token_list else row["explanation"]
            if e:
                out.append({"id": str(lat), "family": f"latent{lat}", "explanation": e,
                            "windows": [wins[i] for i in row["split"]["test"]]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/autointerp_latents", help="working folder (SAE, pool, windows, state.json)")
    ap.add_argument("--ao", default=None, help="shared data root with classification_datasets/ (news, claims)")
    ap.add_argument("--simulator", default=None, help="simulator adapter folder (default: the shipped one)")
    ap.add_argument("--explainer", default=None, help="explainer adapter folder (default: the shipped one)")
    ap.add_argument("--site", default="resid.12")
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32, help="SAE TopK k")
    ap.add_argument("--steps", type=int, default=1200, help="SAE training steps")
    ap.add_argument("--batch", type=int, default=1024, help="SAE rows per step")
    ap.add_argument("--train-tokens", type=int, default=150_000, help="tokens captured for SAE training")
    ap.add_argument("--pool-tokens", type=int, default=40_000, help="held-out tokens the windows come from")
    ap.add_argument("--max-length", type=int, default=128, help="tokens kept per text")
    ap.add_argument("--min-density", type=float, default=5e-4, help="least share of pool tokens a latent fires on")
    ap.add_argument("--max-density", type=float, default=1e-2, help="largest share of pool tokens a latent fires on")
    ap.add_argument("--max-window-share", type=float, default=0.5, help="largest share of windows a latent fires in")
    ap.add_argument("--top", type=int, default=10, help="top-activating windows per latent")
    ap.add_argument("--low", type=int, default=2, help="weakly activating windows per latent")
    ap.add_argument("--random", type=int, default=6, help="random windows per latent")
    ap.add_argument("--n-test", type=int, default=40, help="TEST latents explained and scored")
    ap.add_argument("--n-train", type=int, default=40, help="TRAIN latents explained (for train_latents.jsonl)")
    ap.add_argument("--k-explain", type=int, default=8, help="explanations per latent (best-of-k)")
    ap.add_argument("--controls", type=int, default=5)
    ap.add_argument("--prompt-latents", type=int, default=8)
    ap.add_argument("--prompt-windows", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--result", default="autointerp_latents", help="result name under benchmarks/results/ (no .json)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spath = out / "state.json"
    state = json.loads(spath.read_text()) if spath.exists() else {}
    save = lambda: atomic_write_json(spath, state)  # noqa: E731

    s = load_subject(device="cpu")
    texts = corpus(args.ao, args.seed)
    n_pool = state.get("n_pool") or take_tokens(s.tokenizer, texts, args.pool_tokens, args.max_length)
    state.update(n_pool=n_pool, n_texts=len(texts))
    stage_sae(args, s, texts, n_pool, state, save)
    pool = stage_pool(args, s, texts, n_pool, state, save)
    lines = stage_windows(args, s, pool, state, save)
    order = list(lines)  # permuted order
    test_ids = [lat for lat in order if lines[lat]["split"] == "test"][: args.n_test]
    train_ids = [lat for lat in order if lines[lat]["split"] == "train"]

    # ---- explanations, per adapter pair ---------------------------------------------------------------
    sim_dir, sim_key = adapter_key(args.simulator, "simulator")
    ex_dir, ex_key = adapter_key(args.explainer, "explainer")
    run_key = f"sim={sim_key} ex={ex_key} code={code_key()}"
    print(f"[explain] run {run_key}", flush=True)
    run = state.setdefault("runs", {}).setdefault(run_key, {})
    sim = TrainedSimulator.load(s, sim_dir)
    ex = TrainedExplainer.load(s, ex_dir)
    found = run.setdefault("found", {})
    c0 = time.process_time()
    explain_latents(test_ids, lines, ex, sim, args.k_explain, found, save, "test")
    explain_latents(train_ids[: args.n_train], lines, ex, sim, args.k_explain, found, save, "train")
    print(f"[explain] {time.process_time() - c0:.0f} CPU s this run", flush=True)

    # ---- validity -------------------------------------------------------------------------------------
    feats = test_features(lines, found, test_ids)
    pool_expl = [(f["family"], f["explanation"]) for f in feats]
    if "validity" not in run or run["validity"]["n_features"] != len(feats):
        c0 = time.process_time()
        run["validity"] = {**validity(sim, feats, pool_expl, None, args.controls, seed=args.seed),
                           "n_features": len(feats), "cpu_s": time.process_time() - c0}
        save()
    v = run["validity"]
    print(f"[validity] AUROC {v['auroc']} (true r {v['mean_true_r']}, control r {v['mean_control_r']}; "
          f"{v['n_true']} true, {v['n_controls']} controls, {v['undefined']} undefined)", flush=True)

    sub = feats[: args.prompt_latents]
    for name in ("trained", "prompted"):
        key = f"subset_{name}"
        if key not in run:
            scorer = sim if name == "trained" else PromptSimulator(LocalLLM(s, batch_size=4))
            c0 = time.process_time()
            run[key] = {**validity(scorer, sub, pool_expl, args.prompt_windows, 3, seed=args.seed + 1),
                        "cpu_s": time.process_time() - c0}
            save()
        print(f"[baseline] {name:8s} simulator on {len(sub)} latents x {args.prompt_windows} windows: AUROC "
              f"{run[key]['auroc']} (true r {run[key]['mean_true_r']}, control r {run[key]['mean_control_r']})",
              flush=True)

    # ---- reference: explanations listing the peak tokens of the explain windows (no explainer) --------
    tfeats = test_features(lines, found, test_ids, token_list=True)
    if "validity_token_list" not in run or run["validity_token_list"]["n_features"] != len(tfeats):
        c0 = time.process_time()
        run["validity_token_list"] = {**validity(sim, tfeats, [(f["family"], f["explanation"]) for f in tfeats], None,
                                                 args.controls, seed=args.seed),
                                      "n_features": len(tfeats), "cpu_s": time.process_time() - c0}
        save()
    vt = run["validity_token_list"]
    print(f"[token list] AUROC {vt['auroc']} (true r {vt['mean_true_r']}, control r {vt['mean_control_r']}; "
          f"{vt['undefined']} undefined)", flush=True)

    # ---- self-training lines --------------------------------------------------------------------------
    site = args.site
    explained = [lat for lat in train_ids if found.get(str(lat), {}).get("explanation")]
    write_jsonl(out / "train_latents.jsonl",
                [feature_line(lat, site, lines[lat]["windows"], lines[lat]["scale"], found[str(lat)]) for lat in explained])
    write_jsonl(out / "train_latents_unexplained.jsonl",
                [feature_line(lat, site, lines[lat]["windows"], lines[lat]["scale"], None) for lat in train_ids
                 if lat not in set(explained)])
    print(f"[train] {len(explained)} explained TRAIN latents -> {out / 'train_latents.jsonl'}", flush=True)

    # ---- result ---------------------------------------------------------------------------------------
    per_latent = {}
    for f in feats:
        lat, row, pf = int(f["id"]), found[f["id"]], v["per_feature"][f["id"]]
        per_latent[f["id"]] = {
            "explanation": row["explanation"], "test_r": pf["true"], "control_r": list(pf["controls"].values()),
            "top_tokens": top_tokens(lines[lat]["windows"]), "density": lines[lat]["density"],
            "candidates": [c["text"] for c in row["candidates"]], "test_windows": len(row["split"]["test"])}
    explain_cpu = [found[str(lat)]["cpu_s"] for lat in test_ids + train_ids[: args.n_train] if str(lat) in found]
    result = dict(
        date=time.strftime("%Y-%m-%d"), model=s.name, site=args.site,
        sae={**{k: state["sae"]["config"][k] for k in ("k", "width", "kind", "batch_size", "steps")},
             "train_tokens": state["sae"]["train_rows"], "final_fvu": state["sae"]["final_log"]["fvu"],
             "final_dead_frac": state["sae"]["final_log"]["dead_frac"]},
        pool={"tokens": state["pool"]["rows"], "texts": state["pool"]["texts"],
              "sources": "news snippets, CPython docs (pydoc), common-sense claims, hand-written sentences"},
        windows_per_latent={"top": args.top, "low": args.low, "random": args.random, "tokens": WINDOW},
        latents={"alive_on_pool": state["windows"]["alive"], "eligible": state["windows"]["eligible"],
                 "density_range": [args.min_density, args.max_density],
                 "split": {"test": state["windows"]["test"], "train": state["windows"]["train"]},
                 "explained": {"test": len(test_ids), "train": len(explained)},
                 "no_explanation": [lat for lat in test_ids if not found.get(str(lat), {}).get("explanation")]},
        simulator=sim_key, explainer=ex_key, scorer_code=run_key.split("code=")[1], k=args.k_explain, controls=args.controls,
        validity={x: v[x] for x in ("auroc", "mean_true_r", "mean_control_r", "n_true", "n_controls", "undefined")},
        baseline_subset={"latents": [f["id"] for f in sub], "windows": args.prompt_windows, "controls": 3,
                         **{n: {x: run[f"subset_{n}"][x] for x in ("auroc", "mean_true_r", "mean_control_r",
                                                                   "n_true", "n_controls", "undefined", "cpu_s")}
                            for n in ("trained", "prompted")}},
        validity_token_list_explanations={
            "what": 'explanation = words like "a", "b" or "c": the peak tokens of the explain windows (no explainer)',
            **{x: vt[x] for x in ("auroc", "mean_true_r", "mean_control_r", "n_true", "n_controls", "undefined")},
            "examples": {f["id"]: f["explanation"] for f in tfeats[:8]}},
        distinct_explanations=len({f["explanation"].lower() for f in feats}),
        mean_test_r_of_found=mean_defined(found[str(lat)]["score"] for lat in test_ids if str(lat) in found),
        per_latent=per_latent,
        cpu_s={"sae_capture": state["sae"]["cpu_s"]["capture"], "sae_train": state["sae"]["cpu_s"]["train"],
               "pool": state["pool"]["cpu_s"], "windows": state["windows"]["cpu_s"],
               "explain_per_latent": float(np.mean(explain_cpu)) if explain_cpu else None,
               "explain_total": float(np.sum(explain_cpu)), "validity": v["cpu_s"], "token_list": vt["cpu_s"]},
        target={"validity_auroc>=0.85": v["auroc"] is not None and v["auroc"] >= 0.85},
    )
    write_result(args.result, result, threads=args.threads)


if __name__ == "__main__":
    main()
