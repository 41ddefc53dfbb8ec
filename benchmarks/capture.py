"""Capture speed: metalens vs bare HF `output_hidden_states=True` vs nnsight (vs TransformerLens).

    .venv/bin/python benchmarks/capture.py [--reps 3] [--batch 16] [--seq 128] [--threads 2]

Tokens/s reading `resid` at layers 7, 15 and 29 of the default model (SmolLM2-135M-Instruct),
every tool on the same [batch, seq] token block, interleaved over repetitions (median kept) so
machine load hits all of them alike. Also the forward pass's share of a matmul peak measured
here (MFU). Prints a table and writes benchmarks/results/capture.json.
Targets: >= 1.0x bare HF at layer 29, >= 2x bare HF at layer 7 (early stop), >= 2x nnsight.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from metalens import capture, load_subject

from common import write_result

LAYERS = (7, 15, 29)
WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
         "they you were her she there would their we him been has when who will more no if out so said what up its "
         "about into than them can only other new some could time these two may then do first any my now such like "
         "our over man me even most made after also did many before must through back years where much your way "
         "river mountain paris january seven quantum protein market election violin").split()


def make_texts(n: int, n_words: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(n_words)).capitalize() + "." for _ in range(n)]


def matmul_peak(n: int = 1024, reps: int = 20) -> float:
    """Measured fp32 GFLOP/s of a square matmul on this machine (best of reps)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def forward_flops(s, n_tokens: int, seq: int, n_layers: int, logits: bool) -> float:
    """~2 * params-touched per token for the blocks run, plus attention scores (QK^T and AV),
    plus the unembedding when the runner computes logits (a full forward does; an early stop does not)."""
    block = sum(p.numel() for p in s.model.model.layers[0].parameters())
    attn = 2 * 2 * seq * s.d_model  # per token per layer: scores + weighted sum, each 2*seq*d
    unembed = 2 * s.d_model * s.model.config.vocab_size if logits else 0
    return n_tokens * (n_layers * (2 * block + attn) + unembed)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    s = load_subject(device="cpu")
    tok = s.tokenizer
    texts = make_texts(args.batch, args.seq)  # each longer than seq tokens; truncated to exactly seq
    enc = tok(texts, return_tensors="pt", truncation=True, max_length=args.seq, padding=True)
    assert enc["attention_mask"].all(), "benchmark texts must all fill the sequence"
    n_tokens = enc["input_ids"].numel()

    runners: dict[str, callable] = {}
    for L in LAYERS:
        runners[f"metalens resid.{L}"] = lambda L=L: capture(s, texts, [f"resid.{L}"], batch_size=args.batch,
                                                            max_length=args.seq)

    @torch.no_grad()
    def hf(L: int):
        out = s.model(**enc, output_hidden_states=True)
        return out.hidden_states[L + 1][enc["attention_mask"].bool()]  # [n_tokens, d]

    runners["HF output_hidden_states"] = lambda: hf(29)

    peers: dict[str, str] = {}
    try:
        from nnsight import LanguageModel

        lm = LanguageModel(s.model, tokenizer=tok)

        def nn_run(L: int):
            with torch.no_grad(), lm.trace(enc["input_ids"]):
                h = lm.model.layers[L].output.save()
            return h

        nn_run(7)
        for L in (7, 29):
            runners[f"nnsight resid.{L}"] = lambda L=L: nn_run(L)
        peers["nnsight"] = "ok"
    except Exception as e:  # noqa: BLE001 - a peer that cannot run is reported, not fatal
        peers["nnsight"] = f"failed: {type(e).__name__}: {e}"[:300]
    try:
        from transformer_lens.model_bridge import TransformerBridge

        bridge = TransformerBridge.boot_transformers("HuggingFaceTB/SmolLM2-135M-Instruct", hf_model=s.model,
                                                     tokenizer=tok)

        @torch.no_grad()
        def tl_run(L: int):
            _, cache = bridge.run_with_cache(enc["input_ids"], names_filter=lambda n: n == f"blocks.{L}.hook_resid_post")
            return cache

        tl_run(7)
        runners["TransformerLens resid.29"] = lambda: tl_run(29)
        peers["transformer_lens"] = "ok"
    except Exception as e:  # noqa: BLE001
        peers["transformer_lens"] = f"failed: {type(e).__name__}: {e}"[:300]

    for fn in runners.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in runners}
    peaks = []  # measured inside every repetition: the machine's load changes between them
    for _ in range(args.reps):
        peaks.append(matmul_peak())
        for k, fn in runners.items():
            times[k].append(timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    tps = {k: n_tokens / t for k, t in med.items()}

    peak = max(peaks)
    full_flops = forward_flops(s, n_tokens, args.seq, s.n_layers, logits=True)
    hf_tps = tps["HF output_hidden_states"]
    rows = []
    for k in runners:
        early = k.startswith("metalens")  # stops after the block it reads: no later blocks, no logits
        layers_run = int(k.rsplit(".", 1)[1]) + 1 if early else s.n_layers
        gflops = forward_flops(s, n_tokens, args.seq, layers_run, logits=not early) / med[k] / 1e9
        rows.append(dict(name=k, tokens_per_s=round(tps[k], 1), vs_hf=round(tps[k] / hf_tps, 2),
                         gflops=round(gflops, 1), mfu=round(gflops / peak, 3)))
    ratios = {
        "layer29_vs_hf": tps["metalens resid.29"] / hf_tps,
        "layer7_vs_hf": tps["metalens resid.7"] / hf_tps,
    }
    if "nnsight resid.7" in tps:
        ratios["layer7_vs_nnsight"] = tps["metalens resid.7"] / tps["nnsight resid.7"]
        ratios["layer29_vs_nnsight"] = tps["metalens resid.29"] / tps["nnsight resid.29"]
    targets = {"layer29_vs_hf": 1.0, "layer7_vs_hf": 2.0, "layer7_vs_nnsight": 2.0}

    print(f"\ncapture benchmark: {s.name}, batch {args.batch} x {args.seq} tokens, {args.threads} threads, "
          f"median of {args.reps}; matmul peak {peak:.1f} GFLOP/s (best of {[round(p) for p in peaks]})")
    print(f"{'runner':28s} {'tokens/s':>10s} {'vs HF':>7s} {'GFLOP/s':>8s} {'MFU':>6s}")
    for r in rows:
        print(f"{r['name']:28s} {r['tokens_per_s']:10.1f} {r['vs_hf']:7.2f} {r['gflops']:8.1f} {r['mfu']:6.1%}")
    for k, v in ratios.items():
        tgt = targets.get(k)
        print(f"{k:22s} {v:5.2f}x" + (f"  (target >= {tgt}x: {'met' if v >= tgt else 'NOT met'})" if tgt else ""))
    for k, v in peers.items():
        if v != "ok":
            print(f"{k}: {v}")
    write_result("capture", dict(model=s.name, batch=args.batch, seq=args.seq, reps=args.reps,
                                 matmul_peak_gflops=round(peak, 1), full_forward_gflop=round(full_flops / 1e9, 1),
                                 rows=rows, ratios=ratios, targets=targets, peers=peers, times_s=times), args.threads)


if __name__ == "__main__":
    main()
