"""`make demo`: a short end-to-end run on the default model, printing what it read.

Each pillar adds a section as it lands; a section is a function (subject, console) -> dict.
"""

from __future__ import annotations

import tempfile
import time

import torch
from rich.console import Console
from rich.table import Table

from .capture import capture
from .intervene import add, ablate
from .models import Subject, load_subject
from .store import capture_to_store

TEXTS = [
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "In January and February the lake freezes; by May it is warm again.",
    "def add(a, b):\n    return a + b",
    "She said, \"I will be there at seven o'clock.\"",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar.",
    "The stock market fell 3 percent on Tuesday after the announcement.",
]


def section_chat(s: Subject, con: Console) -> dict:
    q = "What is the capital of France?"
    reply = s.generate(q, max_new_tokens=20)
    con.print(f"[bold]chat[/]  {q!r} -> {reply!r}")
    return {"question": q, "reply": reply}


def section_read(s: Subject, con: Console) -> dict:
    site = f"resid.{s.n_layers // 2}"
    t0 = time.perf_counter()
    acts = capture(s, TEXTS, [site], positions="all")
    dt = time.perf_counter() - t0
    x = acts[site]  # [n_rows, d_model]
    norms = x.norm(dim=1)  # [n_rows]
    table = Table(title=f"read {site}: {len(acts)} tokens x {x.shape[1]} dims in {dt:.2f}s\nlargest-norm tokens after the first")
    for col in ("text", "pos", "token", "norm"):
        table.add_column(col)
    order = norms.masked_fill(acts.positions == 0, -1).argsort(descending=True)  # position 0 is an attention sink
    for i in order[:6].tolist():
        tok = s.tokenizer.decode([acts.token_ids[i].item()])
        table.add_row(str(acts.text_idx[i].item()), str(acts.positions[i].item()), repr(tok), f"{norms[i]:.1f}")
    con.print(table)
    return {"site": site, "rows": len(acts), "d": x.shape[1], "seconds": round(dt, 3), "mean_norm": norms.mean().item()}


def section_write(s: Subject, con: Console) -> dict:
    """A contrastive steering vector (mean difference) added from the prompt's end on, and an ablation."""
    site = "resid.10"
    pos = ["I love this, it is wonderful and makes me so happy.", "What a delightful, beautiful day."]
    neg = ["I hate this, it is awful and makes me so sad.", "What a miserable, horrible day."]
    vec = capture(s, pos, [site], positions="last")[site].mean(0) - capture(s, neg, [site], positions="last")[site].mean(0)
    prompt = "Write one sentence about your weekend."
    plain = s.generate(prompt, max_new_tokens=24)
    with add(s, site, vec, scale=-4.0):
        steered = s.generate(prompt, max_new_tokens=24)
    with ablate(s, "mlp.0"):
        broken = s.generate(prompt, max_new_tokens=12)
    con.print(f"[bold]steer[/] {site} -4 x (happy - sad)\n  plain:   {plain!r}\n  steered: {steered!r}")
    con.print(f"[bold]ablate[/] mlp.0 zeroed: {broken!r}")
    return {"site": site, "plain": plain, "steered": steered, "ablated_mlp0": broken}


def section_store(s: Subject, con: Console) -> dict:
    with tempfile.TemporaryDirectory() as d:
        store = capture_to_store(s, TEXTS, ["resid.15"], d, source="demo", texts_per_shard=2, batch_size=2, progress=False)
        back = store.load("resid.15")
        direct = capture(s, TEXTS, ["resid.15"], batch_size=2)["resid.15"]  # same batches as the shards
        same = torch.equal(back["resid.15"], direct)
    con.print(f"[bold]store[/] {len(store)} rows in {len(store.manifest.shards)} shards; round-trip identical: {same}")
    return {"rows": len(store), "shards": len(store.manifest.shards), "round_trip_identical": same}


SECTIONS = [("chat", section_chat), ("read", section_read), ("write", section_write), ("store", section_store)]


def section_oracle(s: Subject, con: Console) -> dict:
    """The shipped activation oracle (LoRA on the subject) answering questions about activations."""
    from .oracle.ask import demo_section

    return demo_section(con)


SECTIONS.append(("oracle", section_oracle))


def section_autointerp(s: Subject, con: Console) -> dict:
    """Autointerp: simulate a known synthetic feature from its true and from a wrong explanation."""
    from .autointerp.synthetic import demo_section

    return demo_section(s, con)


SECTIONS.append(("autointerp", section_autointerp))


def section_sae(s: Subject, con: Console) -> dict:
    """Dictionary learning: a small TopK SAE on resid.6 trained in seconds, its metrics and one feature."""
    from .sae.demo import demo_section

    return demo_section(s, con)


SECTIONS.append(("sae", section_sae))


def run_demo(quiet: bool = False) -> dict:
    con = Console(quiet=quiet)
    t0 = time.perf_counter()
    with con.status("loading SmolLM2-135M-Instruct (first run converts the GGUF, ~30 s)"):
        s = load_subject()
    con.print(f"[bold]metalens demo[/] on {s.name}: {s.n_layers} layers, d_model {s.d_model}, {s.device}, "
              f"loaded in {time.perf_counter() - t0:.1f}s")
    out = {"model": s.name, "n_layers": s.n_layers, "d_model": s.d_model}
    for name, fn in SECTIONS:
        out[name] = fn(s, con)
    return out
