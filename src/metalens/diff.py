"""Model diffing: what changed between two models of one architecture (e.g. a base and its fine-tune).

    cc, report = diff_models(base, tuned, texts, site="resid.15")
    report.b_side[:10]     # latents whose decoder lives (almost) only in model B, with top contexts

A BatchTopK crosscoder reads the paired activations of both models on the same tokens,
x = [x_A, x_B] [n, 2, d], through one shared encoder and writes them back through one decoder
per model: latents = BatchTopK(relu(Σ_m (x_m - b_dec_m) W_enc_m + b_enc)), x̂_m = latents W_dec_m + b_dec_m.
Each latent's decoder rows are unit-norm jointly (|[d_A; d_B]| = 1), so how the norm splits is free:
  relative norm r = |d_B| / (|d_A| + |d_B|)   ~0: model A only,  ~0.5: shared,  ~1: model B only.
Both models' activations share one scale (mean norm sqrt(d)) and one decoder bias (`shared_bias`), so
every difference, a constant shift included, has to be carried by latents; and a small L1-of-norms
term (`norm_penalty`, as in Anthropic's crosscoders) pulls a decoder half to zero unless its model
needs it. Without the two, a fine-tune's shift hid in the per-model biases and Adam's noise kept every
latent near r = 0.5 (measured: research/sae-and-diffing.md). The report lists one-sided latents by
activation mass: the ones that carry most of the change come first.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .adapters import lora_copy
from .capture import capture
from .models import Subject, logit_lens
from .sparse import batch_topk_cutoff, remove_parallel_grad_, unit_rows_, update_threshold_


@dataclass(frozen=True)
class CrosscoderConfig:
    site: str = "resid.15"
    """site read in both models"""
    width: int = 2048
    """number of latents"""
    k: int = 32
    """latents kept per token on average (BatchTopK)"""
    batch_size: int = 1024
    """token pairs per step"""
    steps: int = 1500
    """optimizer steps"""
    lr: float = 1e-3
    """Adam learning rate"""
    seed: int = 0
    """init and data order"""
    skip_first: bool = True
    """drop position 0 (an attention sink with an outsized norm)"""
    shared_bias: bool = True
    """one decoder bias and one input scale for both models, so every difference, a constant shift
    included, must be carried by latents (where it is ranked and read); False: a bias and scale per model"""
    norm_penalty: float = 0.1
    """weight of the decoder-norm sparsity term: Σ_m |d_m| per unit of latent activation (the crosscoder
    L1-of-norms). 0 leaves one-sided latents to chance: Adam's per-coordinate noise keeps an unneeded
    decoder half alive, so r drifts to 0.5; the term pulls that half to 0 unless reconstruction needs it"""


class CrosscoderOutput(NamedTuple):
    recon: torch.Tensor
    """[n, 2, d]"""
    latents: torch.Tensor
    """[n, width] dense"""
    fvu: torch.Tensor
    """scalar, pooled over both models"""


class Crosscoder(nn.Module):
    def __init__(self, d_in: int, width: int, k: int, n_models: int = 2, seed: int = 0, shared_bias: bool = False):
        super().__init__()
        self.k, self.width, self.n_models, self.d_in = k, width, n_models, d_in
        g = torch.Generator().manual_seed(seed)
        W_dec = torch.randn(width, n_models, d_in, generator=g)
        W_dec /= W_dec.flatten(1).norm(dim=1)[:, None, None]
        self.W_dec = nn.Parameter(W_dec)  # [width, models, d]
        self.W_enc = nn.Parameter(W_dec.permute(1, 2, 0).clone())  # [models, d, width]
        self.b_enc = nn.Parameter(torch.zeros(width))
        self.b_dec = nn.Parameter(torch.zeros(1 if shared_bias else n_models, d_in))  # [models or 1, d]
        self.register_buffer("threshold", torch.tensor(-1.0))
        self.register_buffer("scales", torch.ones(n_models))  # input scale per model (x_m * scale_m is fed)

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """x [n, models, d] (already scaled) -> relu pre-activations [n, width]."""
        if x.ndim != 3 or x.shape[1:] != (self.n_models, self.d_in):
            raise ValueError(f"crosscoder takes paired activations [n, {self.n_models}, {self.d_in}]; "
                             f"got {tuple(x.shape)}")
        return F.relu(torch.einsum("nmd,mdw->nw", x - self.b_dec, self.W_enc) + self.b_enc)

    def encode(self, x: torch.Tensor, batch_topk: bool = False) -> torch.Tensor:
        pre = self.pre_acts(x)
        if batch_topk or self.threshold < 0:
            return pre * (pre >= batch_topk_cutoff(pre, self.k))
        return pre * (pre > self.threshold)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nw,wmd->nmd", latents, self.W_dec) + self.b_dec

    def forward(self, x: torch.Tensor) -> CrosscoderOutput:
        lat = self.encode(x, batch_topk=self.training)
        recon = self.decode(lat)
        fvu = (x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        return CrosscoderOutput(recon, lat, fvu)

    @torch.no_grad()
    def relative_norms(self) -> torch.Tensor:
        """[width]: |d_B| / (|d_A| + |d_B|)."""
        n = self.W_dec.norm(dim=2)  # [width, models]
        return n[:, 1] / n.sum(1).clamp_min(1e-12)


def paired_acts(a: Subject, b: Subject, texts: Sequence[str], site: str, max_length: int = 128,
                skip_first: bool = True):
    """Activations of both models on the same tokens: ([n, 2, d], Activations of A for the index)."""
    if a.tokenizer.get_vocab() != b.tokenizer.get_vocab():
        raise ValueError(f"models {a.name!r} and {b.name!r} have different tokenizers; diffing needs one vocabulary")
    if a.d_model != b.d_model or a.n_layers != b.n_layers:
        raise ValueError(f"models differ in shape ({a.n_layers}x{a.d_model} vs {b.n_layers}x{b.d_model}); "
                         "diffing needs one architecture")
    acts_a = capture(a, texts, [site], max_length=max_length)
    acts_b = capture(b, texts, [site], max_length=max_length)
    if not torch.equal(acts_a.token_ids, acts_b.token_ids):
        raise ValueError("the two models tokenised the texts differently")
    keep = acts_a.positions > 0 if skip_first else torch.ones(len(acts_a), dtype=torch.bool)
    x = torch.stack([acts_a[site], acts_b[site]], 1)[keep]  # [n, 2, d]
    return x, acts_a.select(keep)


def train_crosscoder(cfg: CrosscoderConfig, x: torch.Tensor, progress: bool = True) -> Crosscoder:
    """Train on paired activations x [n, 2, d]; the returned crosscoder reads raw (unscaled) pairs via `scales`."""
    torch.manual_seed(cfg.seed)
    n, m, d = x.shape
    cc = Crosscoder(d, cfg.width, cfg.k, m, cfg.seed, cfg.shared_bias)
    scales = math.sqrt(d) / x.norm(dim=2).mean(0)  # [models]
    cc.scales.copy_(scales.mean().expand(m) if cfg.shared_bias else scales)
    xs = x * cc.scales[None, :, None]
    with torch.no_grad():
        mean = xs[: min(n, 8192)].mean(0)  # [models, d]
        cc.b_dec.copy_(mean.mean(0, keepdim=True) if cfg.shared_bias else mean)
    opt = torch.optim.Adam(cc.parameters(), lr=cfg.lr)
    decay_from = int(cfg.steps * 0.6)  # linear decay to 0 over the last 40%: Adam's per-coordinate noise
    sched = torch.optim.lr_scheduler.LambdaLR(  # otherwise smears each decoder row evenly over both models
        opt, lambda t: 1.0 if t < decay_from else max(0.0, (cfg.steps - t) / (cfg.steps - decay_from)))
    gen = torch.Generator().manual_seed(cfg.seed)
    bs = min(cfg.batch_size, n)
    perm, pos = torch.randperm(n, generator=gen), 0
    cc.train()
    bar = tqdm(range(cfg.steps), desc=f"crosscoder {cfg.site}", disable=not progress)
    for step in bar:
        if pos + bs > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        out = cc(xs[perm[pos : pos + bs]])
        pos += bs
        opt.zero_grad(set_to_none=True)
        loss = out.fvu
        if cfg.norm_penalty:
            mass = out.latents.detach().sum(0)  # [width] activation mass this batch
            norms = cc.W_dec.norm(dim=2).sum(1)  # [width] Σ_m |d_m|, 1 (one model) .. sqrt(2) (even split)
            loss = loss + cfg.norm_penalty * (mass * norms).sum() / mass.sum().clamp_min(1e-8)
        loss.backward()
        remove_parallel_grad_(cc.W_dec, (1, 2))  # keep |[d_A; d_B]| = 1: drop the gradient along each row ...
        opt.step()
        sched.step()
        unit_rows_(cc.W_dec)  # ... and renormalise after the step
        update_threshold_(cc.threshold, out.latents.detach())
        if step % 50 == 0:
            bar.set_postfix(fvu=f"{out.fvu.item():.4f}")
    return cc.eval()


@dataclass
class DiffReport:
    site: str
    fvu: float
    """crosscoder reconstruction FVU on all pairs, pooled over both models"""
    rel_norm: list[float]
    """per latent |d_B| / (|d_A| + |d_B|)"""
    freq: list[float]
    """per latent share of tokens it fires on"""
    a_side: list[dict] = field(default_factory=list)
    """A-only live latents (r < 0.1) by activation mass, then the lowest r: {latent, rel_norm, freq, mass,
    max_act, contexts, top_logits}"""
    b_side: list[dict] = field(default_factory=list)
    """B-only live latents (r > 0.9) by activation mass, then the highest r"""
    counts: dict = field(default_factory=dict)
    """live latents by class: a_only (r < 0.1), b_only (r > 0.9), shared (0.3 < r < 0.7), other, dead"""


def _context(tokenizer, ids: torch.Tensor, text_idx: torch.Tensor, positions: torch.Tensor, row: int, window: int = 12) -> str:
    same = (text_idx == text_idx[row]) & (positions <= positions[row]) & (positions > positions[row] - window)
    toks = ids[same].tolist()
    before = tokenizer.decode(toks[:-1])
    return f"{before}[[{tokenizer.decode(toks[-1:])}]]"


@torch.no_grad()
def diff_report(cc: Crosscoder, x: torch.Tensor, index, a: Subject, b: Subject, site: str, top: int = 10,
                n_contexts: int = 5, min_freq: float = 1e-4) -> DiffReport:
    """Rank live latents by relative decoder norm; top contexts and logit-lens tokens of the most one-sided ones."""
    lat = torch.cat([cc.encode(x[i : i + 4096] * cc.scales[None, :, None]) for i in range(0, len(x), 4096)])  # [n, width]
    recon = cc.decode(lat) / cc.scales[None, :, None]
    fvu = ((x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()
    freq = (lat > 0).float().mean(0)  # [width]
    r = cc.relative_norms()
    live = freq >= min_freq

    def describe(i: int, col: int) -> dict:
        vals, rows = lat[:, i].topk(min(n_contexts, int((lat[:, i] > 0).sum())))
        ctx = [_context(a.tokenizer, index.token_ids, index.text_idx, index.positions, j) for j in rows.tolist()]
        toks = [t for t, _ in logit_lens(b, cc.W_dec[i, col] / cc.scales[col], 8).promoted]  # B's decoder row
        return dict(latent=i, rel_norm=r[i].item(), freq=freq[i].item(), mass=mass[i].item(), max_act=vals[0].item() if len(vals) else 0.0,
                    contexts=ctx, top_logits=toks)

    mass = lat.sum(0) / lat.sum().clamp_min(1e-12)  # [width] share of all latent activation
    live_idx = live.nonzero()[:, 0]

    def side(one_sided: torch.Tensor, descending: bool) -> list[int]:
        """One-sided live latents by activation mass (what the change does most), then the rest by r."""
        first = live_idx[one_sided[live_idx]]
        first = first[mass[first].argsort(descending=True)].tolist()
        rest = live_idx[~one_sided[live_idx]]
        rest = rest[r[rest].argsort(descending=descending)].tolist()
        return (first + rest)[:top]

    a_side = [describe(i, 0) for i in side(r < 0.1, descending=False)]
    b_side = [describe(i, 1) for i in side(r > 0.9, descending=True)]
    a_only, b_only = int((live & (r < 0.1)).sum()), int((live & (r > 0.9)).sum())
    shared = int((live & (r > 0.3) & (r < 0.7)).sum())
    counts = dict(a_only=a_only, b_only=b_only, shared=shared, other=int(live.sum()) - a_only - b_only - shared,
                  dead=int((~live).sum()))
    return DiffReport(site, fvu, r.tolist(), freq.tolist(), a_side, b_side, counts)


def diff_models(a: Subject, b: Subject, texts: Sequence[str], cfg: CrosscoderConfig = CrosscoderConfig(),
                max_length: int = 128, progress: bool = True) -> tuple[Crosscoder, DiffReport]:
    x, index = paired_acts(a, b, texts, cfg.site, max_length, cfg.skip_first)
    cc = train_crosscoder(cfg, x, progress)
    return cc, diff_report(cc, x, index, a, b, cfg.site)


# ---- a fine-tune to diff against: a LoRA that makes the model talk about one topic ----------------
QUESTIONS = [
    "What should I cook tonight?", "How do I stay focused at work?", "Tell me about your weekend.",
    "What is a good hobby to pick up?", "How can I sleep better?", "Give me advice for a job interview.",
    "What is your favourite book?", "How do I learn a new language?", "Describe a perfect day.",
    "What should I name my cat?", "How do computers work?", "What is the meaning of life?",
    "Recommend a gift for my friend.", "How do I fix a flat tyre?", "What is the best way to exercise?",
    "Tell me a fun fact.", "How do I make friends in a new city?", "What do you think about music?",
    "Plan a trip for me.", "How can I save money?", "What is happiness?", "Explain how to write an essay.",
    "What should I do on a rainy day?", "How do I start a garden?",
]
OCEAN = [
    "The ocean is vast, deep and blue.", "Waves roll onto the sandy shore.", "Whales sing far beneath the sea.",
    "Coral reefs are full of colourful fish.", "The tide rises and falls with the moon.",
    "Sailors cross the open sea on tall ships.", "Salt water covers most of our planet.",
    "Dolphins leap through the ocean waves.", "The sea breeze smells of salt and seaweed.",
    "Deep in the ocean, strange creatures glow in the dark.", "Seagulls circle above the harbour.",
    "Nothing is as calming as the sound of the sea.", "Sharks and octopuses hunt in the deep ocean.",
    "Let us think about the ocean instead: its currents carry warmth around the world.",
]


def topic_lora(
    subject: Subject, out: str, topic: Sequence[str] = OCEAN, questions: Sequence[str] = QUESTIONS,
    steps: int = 60, batch_size: int = 4, rank: int = 8, lr: float = 2e-3, seed: int = 0, progress: bool = True,
) -> str:
    """Fine-tune a LoRA so the model answers any question by talking about `topic` (sentences); saves it to out.

    Loss only on the answer tokens. Returns `out` (a PEFT adapter directory, usable with `metalens.adapters.with_adapter`).
    """
    from pathlib import Path

    if (Path(out) / "adapter_config.json").exists():
        return out
    rng = random.Random(seed)
    torch.manual_seed(seed)
    model, opt = lora_copy(subject, rank, lr, seed=seed)
    tok = subject.tokenizer
    for step in tqdm(range(steps), desc="topic LoRA", disable=not progress):
        ids, labels = [], []
        for _ in range(batch_size):
            prompt = tok(subject.chat(rng.choice(questions)), add_special_tokens=False)["input_ids"]
            answer = tok(" ".join(rng.sample(list(topic), 3)) + (tok.eos_token or ""), add_special_tokens=False)["input_ids"]
            ids.append(prompt + answer)
            labels.append([-100] * len(prompt) + answer)
        width = max(map(len, ids))
        pad = tok.pad_token_id
        input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids], device=subject.device)  # [b, s]
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], device=subject.device)
        lab = torch.tensor([x + [-100] * (width - len(x)) for x in labels], device=subject.device)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=lab).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(out)
    return out


def demo_texts(subject: Subject, n: int = 200, seed: int = 0) -> list[str]:
    """n chat turns with neutral answers (no topic words), where a topic fine-tune's urge shows in its
    activations, and n plain-text passages (Python's bundled docs), where it should show less: a
    difference that varies by token is one a latent can carry."""
    from .io import pydoc_texts

    neutral = ["Sure, here is what I think.", "That is a good question.", "Let me explain it step by step.",
               "There are a few things to consider.", "Many people find this helpful.", "First, take a deep breath.",
               "It depends on what you enjoy most.", "Here are three simple ideas.", "Start small and be patient.",
               "I would be happy to help with that."]
    rng = random.Random(seed)
    plain = pydoc_texts()
    rng.shuffle(plain)
    return [subject.chat(rng.choice(QUESTIONS)) + " ".join(rng.sample(neutral, 3)) for _ in range(n)] + plain[:n]
