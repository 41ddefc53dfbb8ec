"""Activation-oracle benchmark: training speed, `ask` latency, and the accuracy table against baselines.

    .venv/bin/python benchmarks/oracle.py [--oracle default] [--data FILE.jsonl | --table REPORT.json] [--steps 4]

- training examples/s: a few LoRA steps (batch 8) of the default recipe's kind of examples
- `ask` latency on CPU for a 64-token context (read "all" = 64 soft tokens; and read "last"), one
  choice question, greedy answer of up to 8 tokens; median of reps
- accuracy table: `metalens.oracle.evaluate` on the held-out-family yes/no file (default for the
  default oracle: research/oracle/eval_heldout.jsonl) for the oracle and the four baselines
Writes benchmarks/results/oracle.json. Targets: ask < 1 s for a 64-token context; held-out AUROC of
P(Yes) >= 0.70 overall and >= 0.10 above untrained injection, and above the text-only control.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from metalens.oracle import Oracle, load_jsonl
from metalens.oracle.evaluate import evaluate

from common import write_result

# the default oracle's eval sets live in the research record, not in the installed package
RESEARCH_ORACLE = Path(__file__).resolve().parents[1] / "research" / "oracle"

CONTEXT_64 = ("The committee met on Tuesday to review the budget for the new library, which had grown by almost "
              "a third since the spring. After two hours of debate, they agreed to delay the vote until the next "
              "meeting, when the architect would present a cheaper plan with fewer reading rooms, a smaller "
              "garden and no underground car park, which several residents had opposed from the start.")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--oracle", default="default")
    ap.add_argument("--data", default=None, help="eval JSONL (default oracle: research/oracle/eval_heldout.jsonl)")
    ap.add_argument("--steps", type=int, default=4, help="training steps timed")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="eval only the first N items")
    ap.add_argument("--table", default=None, help="reuse a `metalens oracle eval --out` report instead of re-running it")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    o = Oracle.load(args.oracle, device="cpu")
    tok = o.subject.tokenizer
    ids = tok(CONTEXT_64, add_special_tokens=False)["input_ids"][:64]
    ctx = tok.decode(ids)
    n_ctx = len(tok(ctx, add_special_tokens=False)["input_ids"])

    # ask latency
    lat = {}
    for read in ("all", "last"):
        o.ask(ctx, "Is this about money?", read=read, choices=["Yes", "No"], max_new_tokens=8)  # warm-up
        ts = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            o.ask(ctx, "Is this about money?", read=read, choices=["Yes", "No"], max_new_tokens=8)
            ts.append(time.perf_counter() - t0)
        lat[read] = round(statistics.median(ts), 3)

    # training examples/s (same model copy: adapter trainable for a few steps, then restored)
    data_dir = Path(args.oracle) if args.oracle != "default" else RESEARCH_ORACLE
    # the default oracle's files are in research/oracle/; a run keeps them in data/ (beside ckpt/ or in it)
    near = lambda name: next((d / name for d in (data_dir, data_dir / "data", data_dir.parent / "data")  # noqa: E731
                              if (d / name).exists()), None)
    train_file = near("eval_trained.jsonl")
    exs = load_jsonl(train_file)[:32] if train_file else []
    ex_per_s = None
    if exs:
        params = [p for n, p in o.peft.named_parameters() if "lora_" in n]
        saved = [p.detach().clone() for p in params]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=1e-9)
        layer = o.layers[0]
        o.loss(exs[:8], [layer] * 8).backward()  # warm-up
        opt.zero_grad()
        t0 = time.perf_counter()
        for i in range(args.steps):
            batch = [exs[(8 * i + j) % len(exs)] for j in range(8)]
            o.loss(batch, [layer] * 8).backward()
            opt.step()
            opt.zero_grad()
        ex_per_s = round(8 * args.steps / (time.perf_counter() - t0), 3)
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
                p.requires_grad_(False)

    # accuracy table on held-out families
    eval_file = Path(args.data) if args.data else near("eval_heldout.jsonl")
    table = None
    if args.table:
        table = json.loads(Path(args.table).read_text())
    elif eval_file:
        items = load_jsonl(eval_file)[: args.limit or None]
        table = evaluate(o, items, ["untrained", "probe", "blackbox", "text"])
        table["data"] = str(eval_file)
    out = dict(oracle=args.oracle, context_tokens=n_ctx, ask_latency_s=lat, train_examples_per_s=ex_per_s, heldout=table)
    if table:
        ov = table["overall"]
        out["targets"] = dict(
            ask_under_1s=lat["all"] < 1.0,
            heldout_auroc_ge_0_70=(ov["oracle"]["auroc"] or 0) >= 0.70,
            plus_0_10_over_untrained=(ov["oracle"]["auroc"] or 0) - (ov["untrained"]["auroc"] or 0) >= 0.10,
            beats_text_only=(ov["oracle"]["auroc"] or 0) > (ov["text"]["auroc"] or 0),
        )
    print(json.dumps({k: v for k, v in out.items() if k != "heldout"}, indent=2))
    if table:
        from metalens.oracle.evaluate import render

        render(table)
    write_result("oracle", out, args.threads)


if __name__ == "__main__":
    main()
