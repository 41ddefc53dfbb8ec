"""SAE training: metalens vs SAELens, same cached activations, same k, width, batch, steps, lr.

    python benchmarks/sae.py --store acts/resid15 [--steps 150] [--k 32] [--width 4608] [--batch 4096] [--repeats 3]

Rows at position 0 are dropped (an attention sink whose norm is ~50x the rest would dominate
both the loss and the FVU denominator). The store holds layer-15 residuals of the default model (`metalens capture --sites resid.15`, e.g. on
the built-in pydoc corpus). Texts are split 90/10 by text index: both trainers stream the same
shuffled batches of the first 90%, FVU is measured on the last 10% with one formula for both
(pooled: Σ|x - x̂|² / Σ|x - x̄|²). Both normalise inputs to mean norm sqrt(d) and fold it out.
Then: a k sweep for metalens (FVU/L0 frontier PNG) and CE-loss recovered at k=32 on held-out
texts. SAELens runs only if `sae_lens` imports (it needs transformer-lens<4, so it lives in its
own environment: see the README). A plain dense TopK SAE in torch (`reference-dense-topk`: same
init, lr and data, autograd through a dense decode) always runs too, named as such.
Writes benchmarks/results/sae.json (and sae_frontier.png).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import torch

from metalens.sae import SaeTrainConfig, train_sae
from metalens.sae.metrics import lm_metrics, reconstruction_metrics
from metalens.sae.train import BatchSource
from metalens.store import ActivationStore

from common import RESULTS, write_result



def split(store: ActivationStore, site: str):
    acts = store.load(site)
    acts = acts.select(acts.positions > 0)  # position 0 is an attention sink, norm ~50x the rest: it would dominate FVU
    cut = int(store.manifest.n_texts * 0.9)
    train = acts.text_idx < cut
    return acts[site][train].contiguous(), acts[site][~train].contiguous(), cut


@torch.no_grad()
def fvu_of(encode, decode, x: torch.Tensor) -> tuple[float, float]:
    err = tot = l0 = 0.0
    mean = x.mean(0)
    for i in range(0, len(x), 4096):
        b = x[i : i + 4096]
        lat = encode(b)
        err += (b - decode(lat)).pow(2).sum().item()
        tot += (b - mean).pow(2).sum().item()
        l0 += (lat != 0).sum().item()
    return err / tot, l0 / len(x)


def run_metalens(train: torch.Tensor, args, k: int, out: Path):
    cfg = SaeTrainConfig(out=str(out), site="resid.15", k=k, width=args.width, batch_size=args.batch, steps=args.steps,
                         lr=args.lr, checkpoint_every=0, log_every=max(1, args.steps // 5), seed=0)
    shutil.rmtree(out, ignore_errors=True)  # a checkpoint left there would be resumed, not timed
    t = time.perf_counter()
    sae = train_sae(cfg, train, model_name="SmolLM2-135M-Instruct", progress=False)
    dt = time.perf_counter() - t
    return sae, dt


def run_saelens(train: torch.Tensor, args, sparse: bool):
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    sae = TopKTrainingSAE(TopKTrainingSAEConfig(
        d_in=train.shape[1], d_sae=args.width, k=args.k, dtype="float32", device="cpu",
        normalize_activations="expected_average_only_in", use_sparse_activations=sparse,
        rescale_acts_by_decoder_norm=True, aux_loss_coefficient=1 / 32,
    ))
    n_norm = 8
    cfg = SAETrainerConfig(total_training_samples=args.steps * args.batch, train_batch_size_samples=args.batch,
                           lr=args.lr, lr_end=args.lr, device="cpu", n_batches_for_norm_estimate=n_norm)
    batches = BatchSource(train, "x").stream(args.batch, seed=0)
    trainer = SAETrainer(cfg, sae, batches)
    t = time.perf_counter()
    trainer.fit()
    dt = time.perf_counter() - t
    return sae, dt


def run_reference(train: torch.Tensor, args):
    """A straightforward dense TopK SAE (dense decode, autograd through topk), same init and lr."""
    d = train.shape[1]
    scale = math.sqrt(d) / train.norm(dim=1).mean()
    g = torch.Generator().manual_seed(0)
    W_dec = torch.randn(args.width, d, generator=g)
    W_dec = torch.nn.Parameter(W_dec / W_dec.norm(dim=1, keepdim=True))
    W_enc = torch.nn.Parameter(W_dec.detach().T.clone())
    b_enc, b_dec = torch.nn.Parameter(torch.zeros(args.width)), torch.nn.Parameter(train[:4096].mean(0) * scale)
    opt = torch.optim.Adam([W_enc, W_dec, b_enc, b_dec], lr=args.lr)
    batches = BatchSource(train, "x").stream(args.batch, seed=0)

    def encode(x):
        pre = torch.relu((x - b_dec) @ W_enc + b_enc)
        v, i = pre.topk(args.k, dim=1)
        return torch.zeros_like(pre).scatter(1, i, v)

    t = time.perf_counter()
    for _ in range(args.steps):
        x = next(batches) * scale
        rec = encode(x) @ W_dec + b_dec
        loss = (x - rec).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        with torch.no_grad():
            W_dec.grad -= (W_dec.grad * W_dec).sum(1, keepdim=True) * W_dec
        opt.step()
        with torch.no_grad():
            W_dec /= W_dec.norm(dim=1, keepdim=True)
    dt = time.perf_counter() - t
    with torch.no_grad():
        enc = lambda x: encode(x * scale)  # noqa: E731
        dec = lambda lat: (lat @ W_dec + b_dec) / scale  # noqa: E731
    return enc, dec, dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", required=True)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--width", type=int, default=4608)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds; tokens/s is their median")
    ap.add_argument("--sweep", default="16,32,64", help="k values for the metalens frontier ('' to skip)")
    ap.add_argument("--ce-texts", type=int, default=32, help="held-out texts for CE-loss recovered (0 to skip)")
    ap.add_argument("--work", default="/tmp/metalens-bench-sae")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    store = ActivationStore(args.store)
    train, test, cut = split(store, "resid.15")
    work = Path(args.work)
    tokens = args.steps * args.batch
    res = dict(repeats=args.repeats, store=str(args.store), model=store.manifest.model, site="resid.15", train_rows=len(train),
               test_rows=len(test), k=args.k, width=args.width, batch=args.batch, steps=args.steps, lr=args.lr,
               fvu_formula="sum |x - x_hat|^2 / sum |x - mean(x)|^2 over the held-out rows (pooled)", runs={})

    # The trainers alternate, --repeats rounds (metalens, SAELens, reference, metalens, ...), so a change
    # in machine load hits all of them alike; tokens/s is the median over rounds, every round is kept.
    try:
        import sae_lens

        sl_name = f"saelens-{sae_lens.__version__}"
    except ImportError:
        sae_lens, sl_name = None, None
        res["runs"]["saelens"] = dict(error="sae_lens is not installed in this environment")
    times: dict[str, list[float]] = {}
    models = {}
    for rnd in range(args.repeats):
        sae, dt = run_metalens(train, args, args.k, work / f"metalens-k{args.k}-r{rnd}")
        times.setdefault("metalens", []).append(dt)
        models["metalens"] = (sae.encode, sae.decode)
        print(f"round {rnd} metalens        {tokens / dt:9.0f} tok/s", flush=True)
        if sae_lens is not None:
            for sparse in ((False, True) if rnd == 0 else (False,)):
                name = sl_name + ("-sparse" if sparse else "")
                try:
                    sl, dt = run_saelens(train, args, sparse)
                except Exception as e:  # noqa: BLE001 - recorded, not hidden
                    res["runs"][name] = dict(error=f"{type(e).__name__}: {str(e)[:200]}")
                    print(f"{name:15s} failed: {type(e).__name__}", flush=True)
                    continue
                times.setdefault(name, []).append(dt)
                models[name] = (sl.encode, sl.decode)
                print(f"round {rnd} {name:15s} {tokens / dt:9.0f} tok/s", flush=True)
        enc, dec, dt = run_reference(train, args)
        times.setdefault("reference-dense-topk", []).append(dt)
        models["reference-dense-topk"] = (enc, dec)
        print(f"round {rnd} reference-dense {tokens / dt:9.0f} tok/s", flush=True)
    for name, ts in times.items():
        fvu, l0 = fvu_of(*models[name], test)
        med = sorted(ts)[len(ts) // 2]
        res["runs"][name] = dict(seconds=med, tokens_per_s=tokens / med, tokens_per_s_rounds=[tokens / t for t in ts],
                                 fvu=fvu, l0=l0)
        print(f"{name:22s} median {tokens / med:9.0f} tok/s  FVU {fvu:.4f}  L0 {l0:.1f}", flush=True)
    ours = res["runs"]["metalens"]
    res["ratios"] = {n: dict(speedup=ours["tokens_per_s"] / r["tokens_per_s"], fvu_delta=ours["fvu"] - r["fvu"])
                     for n, r in res["runs"].items() if n != "metalens" and "error" not in r}
    write_result("sae", res, args.threads)  # the comparison is kept even if a later phase fails

    if args.sweep:
        from metalens.viz.sae import plot_frontier

        points = []
        for k in [int(x) for x in args.sweep.split(",")]:
            s = sae if k == args.k else run_metalens(train, args, k, work / f"metalens-k{k}")[0]
            m = reconstruction_metrics(s, test)
            points.append(dict(k=k, l0=m.l0, fvu=m.fvu, dead_frac=m.dead_frac))
            print(f"sweep k={k}: FVU {m.fvu:.4f} L0 {m.l0:.1f} dead {m.dead_frac:.3f}", flush=True)
        res["frontier"] = points
        res["frontier_png"] = str(plot_frontier(points, RESULTS / "sae_frontier.png",
                                                title=f"SmolLM2-135M resid.15, width {args.width}, {args.steps} steps"))
    if args.ce_texts:
        from metalens import load_subject
        from metalens.io import pydoc_texts

        texts = pydoc_texts()[cut : cut + args.ce_texts]
        subject = load_subject(device="cpu")
        res["lm"] = dict(k=args.k, **lm_metrics(subject, sae, "resid.15", texts, batch_size=8)._asdict())
        print(f"CE: clean {res['lm']['ce_clean']:.3f} sae {res['lm']['ce_sae']:.3f} zero {res['lm']['ce_zero']:.3f} "
              f"recovered {res['lm']['ce_recovered']:.3f} KL {res['lm']['kl_sae']:.3f}", flush=True)
    write_result("sae", res, args.threads)
    print(json.dumps(res["ratios"], indent=2))


if __name__ == "__main__":
    main()
