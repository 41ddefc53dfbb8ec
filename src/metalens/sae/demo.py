"""`metalens demo` section: a small TopK SAE trained in seconds, its metrics, a feature, and clamping it."""

from __future__ import annotations

import tempfile
import time

from rich.console import Console

from ..capture import capture
from ..models import Subject
from ..io import pydoc_texts
from .features import sae_cards
from .metrics import lm_metrics, reconstruction_metrics
from .train import SaeTrainConfig, train_sae


def demo_section(s: Subject, con: Console, site: str = "resid.6") -> dict:
    t0 = time.perf_counter()
    texts = pydoc_texts()
    acts = capture(s, texts[:60], [site], max_length=64)  # ~3.5k tokens; layer 6 stops the pass early
    keep = acts.positions > 0  # the first token is an attention sink with an outsized norm
    acts = acts.select(keep)
    with tempfile.TemporaryDirectory() as d:
        cfg = SaeTrainConfig(out=d, site=site, k=16, width=1024, batch_size=512, steps=100, lr=2e-3,
                             checkpoint_every=0, log_every=50)
        sae = train_sae(cfg, acts[site], model_name=s.name, progress=False)
    m = reconstruction_metrics(sae, acts[site])
    lm = lm_metrics(s, sae, site, texts[60:66], max_length=64)
    freq = (sae.encode(acts[site]) > 0).float().mean(0)
    latent = int((freq - 0.02).abs().argmin())  # a latent active on ~2% of tokens
    card = sae_cards(sae, acts, [latent], s, n_top=5)[0]
    tops = [ex["tokens"][ex["target"]] for ex in card.top]
    con.print(f"[bold]sae[/] TopK k=16 width=1024 on {site} ({len(acts)} tokens, 100 steps, "
              f"{time.perf_counter() - t0:.0f}s): FVU {m.fvu:.3f}, L0 {m.l0:.0f}, dead {m.dead_frac:.2f}; "
              f"CE clean {lm.ce_clean:.2f} / SAE {lm.ce_sae:.2f} / zero {lm.ce_zero:.2f} -> "
              f"recovered {lm.ce_recovered if lm.ce_recovered is None else round(lm.ce_recovered, 2)}")
    con.print(f"      latent {latent}: top tokens {tops}; promotes {[t for t, _ in card.pos_logits[:5]]}")
    return dict(site=site, tokens=len(acts), fvu=m.fvu, l0=m.l0, ce_recovered=lm.ce_recovered,
                latent=latent, top_tokens=tops, seconds=round(time.perf_counter() - t0, 1))
