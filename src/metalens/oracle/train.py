"""Train an activation oracle: LoRA on the subject itself, soft tokens from its own activations.

    metalens oracle train --recipe default --out runs/oracle1          # builds data, trains, checkpoints
    metalens oracle train --resume runs/oracle1                          # continues from the last checkpoint
    torchrun --nproc_per_node 4 -m metalens oracle train --out runs/o4   # data-parallel over 4 GPUs

Under torchrun each optimizer step takes batch_size x grad_accum examples per process; process r
runs micro-batches r, r + world, ... of one shared cursor and DistributedDataParallel averages the gradients, so W
processes make the same update as one process with grad_accum x W (tested on CPU with gloo).

Run directory: config.json, data/*.jsonl (built once), ckpt/ (adapter + oracle.json + state.pt:
optimizer, step, RNG, data cursor; replaced atomically every `ckpt_every_s`), log.jsonl (loss per
step), curve.jsonl (held-out evaluation at intervals).
"""

from __future__ import annotations

from typing import Literal

import json
import math
import os
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..adapters import add_lora, load_adapter
from ..io import atomic_write_json
from ..metrics import auroc
from ..models import load_subject
from .ask import Oracle
from .tasks import (OracleDataError, available_tasks, context_prediction_examples, dataset_texts, default_data_dir, latentqa_examples,
                    load_jsonl, mention_examples, relation_examples, save_jsonl, yes_no_examples)


@dataclass(frozen=True)
class OracleConfig:
    """Everything that defines an oracle training run (saved as config.json beside it)."""

    model: str | None = None
    """subject: local HF dir, or None for SmolLM2-135M-Instruct"""
    data_dir: str = ""
    """ao data directory (../shared/data/ao layout); "" = $METALENS_AO_DATA (no default: the data is the user's)"""
    layers_pct: tuple = (50,)
    """read layers as percent of depth (each example draws one)"""
    inject_layer: int = 1
    """block whose output receives the soft tokens"""
    inject: Literal["add", "replace"] = "add"
    """add (norm-matched) | replace"""
    scale: float = 1.0
    """injection scale"""
    system: str | None = ""
    """oracle system prompt ("" = an empty one, short; None = the template's default)"""
    lora_r: int = 16
    """LoRA rank"""
    lora_alpha: int = 32
    """LoRA alpha"""
    lr: float = 1e-3
    """peak learning rate (AdamW)"""
    warmup: int = 20
    """linear warm-up steps"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    batch_size: int = 8
    """examples per micro-batch"""
    grad_accum: int = 1
    """micro-batches per optimizer step"""
    max_steps: int = 500
    """optimizer steps in all (cosine decay to 10% over them)"""
    minutes: float = 0.0
    """stop this session after this many minutes (0 = no limit); resume continues"""
    n_context: int = 6000
    """context-prediction examples (self-supervised, the bulk of the mix)"""
    max_vectors: int = 3
    """context prediction reads 1..max_vectors vectors"""
    max_context: int = 24
    """context-prediction texts are cut to this many tokens"""
    n_generated: int = 16
    """texts the subject generates itself for context prediction (0 = none)"""
    n_yes_no_per_task: int = 300
    """yes/no examples per trained task"""
    yes_no_read: tuple | str = (-2, None)
    """which tokens yes/no examples read"""
    heldout_families: tuple = ("singular_plural", "engels")
    """yes/no task families never trained on (reported as held out)"""
    n_latentqa: int = 600
    """system-prompt QA examples (0 = none)"""
    n_relations: int = 0
    """relation yes/no examples ("Is this about a country?", "Is the answer Paris?"; 0 = none)"""
    n_mention: int = 0
    """self-supervised yes/no examples ("Does this text mention 'w'?"; 0 = none)"""
    init_adapter: str = ""
    """start from this adapter directory's LoRA weights (fresh optimizer and schedule); "" = a new LoRA"""
    n_eval: int = 48
    """items per held-out evaluation set"""
    eval_every_s: float = 900.0
    """seconds between held-out evaluations"""
    eval_at_start: bool = True
    """evaluate before the first step (the untrained-injection point of the learning curve)"""
    ckpt_every_s: float = 180.0
    """seconds between checkpoints"""
    seed: int = 0
    """seed for data, init and order"""
    threads: int = 2
    """torch CPU threads"""

    def layers(self, n_layers: int) -> list[int]:
        return sorted({min(n_layers - 1, max(0, round(n_layers * p / 100))) for p in self.layers_pct})

    @classmethod
    def from_json(cls, d: dict) -> "OracleConfig":
        known = {f.name for f in fields(cls)}
        d = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known}
        return cls(**d)


RECIPES = {
    "default": OracleConfig(),
    # stage 2: many yes/no questions whose concept is named in the question, started from a stage-1 run
    # (--set init_adapter=runs/oracle-default/ckpt); see docs/oracle.md
    "diverse": OracleConfig(n_context=3000, n_latentqa=300, n_generated=0, n_relations=2000, n_mention=2000,
                            n_eval=120, eval_every_s=720.0, lr=5e-4, max_steps=750),
    "tiny": OracleConfig(n_context=64, n_yes_no_per_task=8, n_latentqa=8, n_generated=0, n_eval=8, max_steps=4,
                         batch_size=4, warmup=1, eval_every_s=1e9, ckpt_every_s=1e9),
}


def build_data(cfg: OracleConfig, subject, out: Path) -> None:
    """Write data/train.jsonl and the held-out sets (done once per run; resume reads them back)."""
    data = Path(cfg.data_dir) if cfg.data_dir else default_data_dir()
    tok = subject.tokenizer
    texts = dataset_texts(data)
    random.Random(cfg.seed).shuffle(texts)
    if len(texts) < 4:
        raise ValueError(f"only {len(texts)} usable texts under {data}; context prediction needs more")
    n_test = min(max(20, len(texts) // 20), len(texts) // 2)
    test_texts, train_texts = texts[:n_test], texts[n_test:]
    if cfg.n_generated:
        starts = ["Tell me about", "Write a sentence about", "Describe", "Explain", "What do you know about"]
        topics = ["the sea", "a city", "music", "cooking", "history", "a cat", "science", "sports", "winter", "money",
                  "friendship", "a computer", "a river", "a king", "the moon", "trains"]
        rng = random.Random(cfg.seed)
        prompts = [f"{rng.choice(starts)} {rng.choice(topics)}." for _ in range(cfg.n_generated)]
        for p in tqdm(prompts, desc="generate texts"):
            train_texts.append(subject.generate(p, max_new_tokens=cfg.max_context))
    tasks = available_tasks(data)
    trained = [t.name for t in tasks if t.family not in cfg.heldout_families]
    held = [t.name for t in tasks if t.family in cfg.heldout_families]
    n_lqa = cfg.n_latentqa if (data / "latentqa_datasets").exists() else 0
    yn_read = tuple(cfg.yes_no_read) if not isinstance(cfg.yes_no_read, str) else cfg.yes_no_read
    train = context_prediction_examples(train_texts, tok, cfg.n_context, cfg.seed, cfg.max_vectors, 3, cfg.max_context)
    if trained and cfg.n_yes_no_per_task:
        train += yes_no_examples(data, trained, cfg.n_yes_no_per_task, cfg.seed, yn_read, split="train")
    if n_lqa:
        train += latentqa_examples(data, "train", cfg.n_latentqa, cfg.seed)
    if cfg.n_relations:
        train += relation_examples(data, cfg.n_relations, cfg.seed, yn_read, split="train")
    if cfg.n_mention:
        train += mention_examples(train_texts, tok, cfg.n_mention, cfg.seed, max_context=cfg.max_context)
    random.Random(cfg.seed).shuffle(train)
    per = lambda names: max(2, cfg.n_eval // max(1, len(names)))  # noqa: E731
    sets = {
        "train": train,
        "eval_trained": yes_no_examples(data, trained, per(trained), cfg.seed + 1, yn_read, split="test") if trained else [],
        "eval_heldout": yes_no_examples(data, held, per(held), cfg.seed + 1, yn_read, split="test") if held else [],
        "eval_context": context_prediction_examples(test_texts, tok, cfg.n_eval, cfg.seed + 1, cfg.max_vectors, 3,
                                                    cfg.max_context),
        "eval_latentqa": latentqa_examples(data, "eval", cfg.n_eval // 2, cfg.seed + 1) if n_lqa else [],
        # larger test-split sets for the final report (`metalens oracle eval --data ...`)
        "final_trained": yes_no_examples(data, trained, 12, cfg.seed + 2, yn_read, split="test") if trained else [],
        "final_heldout": yes_no_examples(data, held, 40, cfg.seed + 2, yn_read, split="test") if held else [],
        "probe_train": yes_no_examples(data, trained + held, 100, cfg.seed + 3, yn_read, split="train"),
    }
    if cfg.n_relations:
        sets["eval_relations"] = relation_examples(data, cfg.n_eval, cfg.seed + 1, yn_read, split="test")
    if cfg.n_mention:
        sets["eval_mention"] = mention_examples(test_texts, tok, cfg.n_eval, cfg.seed + 1, max_context=cfg.max_context)
    for name, exs in sets.items():
        save_jsonl(exs, out / "data" / f"{name}.jsonl")


@torch.no_grad()
def evaluate_curve(oracle: Oracle, out: Path, layer: int, adapter: bool = True) -> dict:
    """AUROC of P(Yes) on held-out items of trained and held-out families, and held-out answer loss."""
    res = {}
    for name in ("eval_trained", "eval_heldout", "eval_relations", "eval_mention"):
        path = out / "data" / f"{name}.jsonl"
        exs = load_jsonl(path) if path.exists() else []
        if exs:
            p = oracle.choice_probs(exs, [layer] * len(exs), adapter=adapter)[:, 0].tolist()
            y = [int(e.answer == e.choices[0]) for e in exs]
            a = auroc(p, y)
            res[f"{name}_auroc"] = None if a is None else round(a, 4)
            res[f"{name}_acc"] = round(sum((pi > 0.5) == bool(yi) for pi, yi in zip(p, y)) / len(y), 4)
    for name in ("eval_context", "eval_latentqa"):
        exs = load_jsonl(out / "data" / f"{name}.jsonl")
        if exs:
            losses = [float(oracle.loss(exs[i : i + 16], [layer] * len(exs[i : i + 16]), adapter=adapter))
                      for i in range(0, len(exs), 16)]
            res[f"{name}_loss"] = round(sum(losses) / len(losses), 4)
    return res


def _lr(cfg: OracleConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = min(1.0, (step - cfg.warmup) / max(1, cfg.max_steps - cfg.warmup))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def _save_ckpt(oracle: Oracle, opt, state: dict, out: Path) -> None:
    tmp = out / "ckpt.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    oracle.save(tmp)
    torch.save({"optimizer": opt.state_dict(), **state, "rng_torch": torch.get_rng_state(),
                "rng_py": random.getstate()}, tmp / "state.pt")
    old = out / "ckpt.old"
    shutil.rmtree(old, ignore_errors=True)
    if (out / "ckpt").exists():
        os.replace(out / "ckpt", old)
    os.replace(tmp, out / "ckpt")
    shutil.rmtree(old, ignore_errors=True)


def train(cfg: OracleConfig | None = None, out: str | os.PathLike = "runs/oracle", resume: bool = False,
          subject=None, progress: bool = True) -> Path:
    """Train (or, with resume=True, continue) an oracle in `out`; returns the checkpoint directory."""
    out = Path(out)
    if resume:
        if not (out / "config.json").exists():
            raise FileNotFoundError(f"cannot resume: {out / 'config.json'} does not exist")
        saved = OracleConfig.from_json(json.loads((out / "config.json").read_text()))
        cfg = saved if cfg is None else OracleConfig.from_json({**asdict(saved), "minutes": cfg.minutes,
                                                                "max_steps": max(cfg.max_steps, saved.max_steps)})
    cfg = cfg or OracleConfig()
    torch.set_num_threads(cfg.threads)
    rank, world, device = _distributed()
    main = rank == 0
    progress = progress and main
    if main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "config.json", asdict(cfg))
    subject = subject or load_subject(cfg.model, device=device)
    if main and not (out / "data" / "train.jsonl").exists():
        build_data(cfg, subject, out)
    _barrier(world)  # the other ranks read the data rank 0 built
    train_set = load_jsonl(out / "data" / "train.jsonl")
    layers = cfg.layers(subject.n_layers)
    settings = dict(model=cfg.model, layers=layers, inject_layer=cfg.inject_layer, inject=cfg.inject,
                    scale=cfg.scale, system=cfg.system, d_subject=subject.d_model)

    ckpt = out / "ckpt"
    if not ckpt.exists() and (out / "ckpt.old").exists():  # killed between _save_ckpt's two renames
        os.replace(out / "ckpt.old", ckpt)
    resuming = resume and (ckpt / "state.pt").exists()
    start = str(ckpt) if resuming else cfg.init_adapter  # adapter weights to start from ("" = a new LoRA)
    if start:
        if not (Path(start) / "adapter_config.json").exists():
            raise OracleDataError(f"{start!r} holds no adapter_config.json (init_adapter must be a saved oracle or ckpt dir)")
        peft_model = load_adapter(subject.model, start, trainable=True)
    else:
        peft_model = add_lora(subject.model, cfg.lora_r, cfg.lora_alpha, 0.0, cfg.seed)
    # optimizer, step, RNG and data cursor of the run being resumed (no arbitrary unpickling)
    state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True) if resuming else None
    oracle = Oracle(subject, peft_model, settings)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    step_loss = _OracleLoss(oracle)
    if world > 1:  # DistributedDataParallel averages the ranks' gradients during backward
        from torch.nn.parallel import DistributedDataParallel

        step_loss = DistributedDataParallel(step_loss, broadcast_buffers=False)
    step, cursor, epoch = 0, 0, 0
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        step, cursor, epoch = state["step"], state["cursor"], state["epoch"]
        torch.set_rng_state(state["rng_torch"])
        random.setstate(state["rng_py"])
    else:
        random.seed(cfg.seed)

    def order(ep: int) -> list[int]:
        idx = list(range(len(train_set)))
        random.Random(cfg.seed * 1000 + ep).shuffle(idx)
        return idx

    perm = order(epoch)
    log = open(out / "log.jsonl", "a") if main else open(os.devnull, "w")
    t_start = last_ckpt = time.time()
    last_eval = time.time() if state is not None or not cfg.eval_at_start else 0.0
    bar = tqdm(total=cfg.max_steps, initial=step, desc="oracle train", disable=not progress)
    mid = layers[len(layers) // 2]
    eval_step = step

    def ckpt_now():
        if main:
            _save_ckpt(oracle, opt, dict(step=step, cursor=cursor, epoch=epoch), out)

    while step < cfg.max_steps:
        if main and (time.time() - last_eval >= cfg.eval_every_s or (
                step == 0 and state is None and last_eval == 0.0 and cfg.eval_at_start)):
            peft_model.eval()
            t0 = time.time()
            row = dict(step=step, examples=step * cfg.batch_size * cfg.grad_accum * world, time=round(time.time(), 1),
                       **evaluate_curve(oracle, out, mid))
            row["eval_s"] = round(time.time() - t0, 1)
            with open(out / "curve.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            bar.write(f"eval @ step {step}: {row}")
            last_eval = time.time()
            eval_step = step
        if _any_rank(bool(cfg.minutes and time.time() - t_start > cfg.minutes * 60), world):
            break  # decided together: a rank that stopped alone would leave the others waiting in all_reduce
        peft_model.train()
        for g in opt.param_groups:
            g["lr"] = _lr(cfg, step)
        t0, total, n_micro = time.time(), 0.0, cfg.grad_accum * world
        mine = 0  # this rank's micro-batches so far: DDP syncs gradients on the last one only
        for m in range(n_micro):  # every rank walks the same cursor; micro-batch m runs on rank m % world
            if cursor + cfg.batch_size > len(perm):
                epoch, cursor = epoch + 1, 0
                perm = order(epoch)
            exs = [train_set[i] for i in perm[cursor : cursor + cfg.batch_size]]
            cursor += cfg.batch_size
            if m % world != rank:
                continue
            mine += 1
            ls = [random.choice(layers) for _ in exs]
            sync = world == 1 or mine == cfg.grad_accum
            with nullcontext() if sync else step_loss.no_sync():
                loss = step_loss(exs, ls)
                (loss / cfg.grad_accum).backward()  # DDP's average over the ranks completes the 1 / n_micro
            total += float(loss.detach()) / n_micro
        if world > 1:  # the logged loss, summed over the ranks (the gradients were averaged by DDP)
            import torch.distributed as dist

            t_ = torch.tensor([total], device=params[0].device)
            dist.all_reduce(t_)
            total = float(t_)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        log.write(json.dumps(dict(step=step, loss=round(total, 4), lr=_lr(cfg, step - 1), s=round(time.time() - t0, 2)))
                  + "\n")
        log.flush()
        bar.update(1)
        bar.set_postfix(loss=f"{total:.3f}")
        if time.time() - last_ckpt >= cfg.ckpt_every_s:
            ckpt_now()
            last_ckpt = time.time()
    ckpt_now()
    if main and step != eval_step:  # close the learning curve at the session's last step
        peft_model.eval()
        with open(out / "curve.jsonl", "a") as f:
            f.write(json.dumps(dict(step=step, examples=step * cfg.batch_size * cfg.grad_accum * world, final=step >= cfg.max_steps,
                                    **evaluate_curve(oracle, out, mid))) + "\n")
    bar.close()
    log.close()
    _barrier(world)
    return ckpt


class _OracleLoss(torch.nn.Module):
    """The oracle's training loss as one module, so DistributedDataParallel can wrap it."""

    def __init__(self, oracle: Oracle):
        super().__init__()
        self.oracle = oracle
        self.peft = oracle.peft  # registers the adapter's parameters

    def forward(self, examples, layers) -> torch.Tensor:
        return self.oracle.loss(examples, layers)


# ---- several processes (torchrun): data-parallel, one process per GPU (or CPU process, gloo) ----------
def _distributed() -> tuple[int, int, str]:
    """(rank, world size, device) — from torchrun's environment; (0, 1, "auto") for one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, "auto"
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local)
    return dist.get_rank(), world, f"cuda:{local}" if cuda else "cpu"


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _any_rank(flag: bool, world: int) -> bool:
    if world == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([int(flag)], device="cuda" if torch.cuda.is_available() else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
