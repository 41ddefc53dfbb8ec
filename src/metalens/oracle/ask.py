"""Ask an oracle about a context's activations: `Oracle.load("default").ask(context, question)`.

One model copy: the subject with a LoRA adapter. Reads run with the adapter disabled (the plain
subject); the oracle's forward pass runs with it enabled and the read vectors injected.
"""

from __future__ import annotations

import json
import numbers
import os
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal, Sequence

import torch
import torch.nn.functional as F

from ..adapters import load_adapter
from ..io import atomic_write_json
from ..models import Subject, load_subject
from ..capture import chat_text
from .inject import INJECT_MODES, Projection, encode, inject, prompt_ids, read_vectors
from .tasks import Example, OracleDataError, example_from_dict

DEFAULT_DIR = Path(__file__).parent / "default"
SETTINGS_FILE = "oracle.json"
PROJECTION_FILE = "projection.safetensors"


@dataclass
class Answer:
    """The oracle's reply; `probs` maps each choice to its probability when choices were given."""

    text: str
    probs: dict = field(default_factory=dict)
    layer: int = 0
    n_vectors: int = 0

    def to_json(self) -> dict:
        return {"text": self.text, "probs": self.probs, "layer": self.layer, "n_vectors": self.n_vectors}


@dataclass(frozen=True)
class OracleSettings:
    """How an oracle was trained to read: saved beside its adapter as oracle.json."""

    layers: tuple[int, ...]
    """the subject layers whose residual stream it was trained to read"""
    model: str | None = None
    """the subject it reads (None: the default model)"""
    inject_layer: int = 1
    """the oracle block after which the read vectors are injected"""
    inject: Literal["add", "replace"] = "add"
    """add (norm-matched) or replace the placeholder's residual"""
    scale: float = 1.0
    """injection strength (add mode)"""
    system: str | None = ""
    """the oracle's system prompt (None: no system message)"""
    d_subject: int | None = None
    """width of the read vectors (a projection maps them when it differs from the oracle's)"""

    @classmethod
    def from_json(cls, obj, where: str = "oracle settings") -> "OracleSettings":
        """Checked settings from a JSON object; an OracleDataError names what is wrong."""
        if isinstance(obj, OracleSettings):
            return obj
        layers = obj.get("layers") if isinstance(obj, dict) else None
        if not (isinstance(layers, (list, tuple)) and layers
                and all(isinstance(x, int) and not isinstance(x, bool) for x in layers)):
            raise OracleDataError(f"{where}: expected a JSON object with 'layers': [int, ...], got {str(obj)[:120]!r}")
        known = {f.name for f in fields(cls)}
        extra = sorted(set(obj) - known)
        if extra:
            raise OracleDataError(f"{where}: unknown field(s) {extra}; known: {sorted(known)}")
        if not isinstance(obj.get("model"), (str, type(None))):
            raise OracleDataError(f"{where}: 'model' must be a string or null, got {obj.get('model')!r}")
        if obj.get("inject", "add") not in INJECT_MODES:
            raise OracleDataError(f"{where}: 'inject' must be one of {INJECT_MODES}, got {obj.get('inject')!r}")
        return cls(**{**obj, "layers": tuple(layers)})


class Oracle:
    """Subject + LoRA adapter + the injection settings it was trained with (`OracleSettings`)."""

    def __init__(self, subject: Subject, peft_model, settings: OracleSettings | dict, projection: Projection | None = None):
        self.subject, self.peft, self.projection = subject, peft_model, projection
        self.settings = OracleSettings.from_json(settings)
        self.reader: Subject | None = None  # read activations from this model instead (e.g. a fine-tuned copy)

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def load(cls, path: str | os.PathLike = "default", model: str | None = None, device: str = "auto") -> "Oracle":
        """Load an adapter directory (or "default", the adapter shipped with metalens) onto its subject."""
        d = DEFAULT_DIR if str(path) == "default" else Path(path)
        if (d / "ckpt" / SETTINGS_FILE).exists() and not (d / SETTINGS_FILE).exists():
            d = d / "ckpt"  # a training run directory: its latest checkpoint
        if not (d / SETTINGS_FILE).exists():
            raise OracleDataError(f"{str(d)!r} holds no oracle ({SETTINGS_FILE} missing): give a directory saved by "
                                  "`metalens oracle train` or 'default'")
        try:
            settings = json.loads((d / SETTINGS_FILE).read_bytes().decode("utf-8"))
        except (ValueError, RecursionError) as e:
            raise OracleDataError(f"{d / SETTINGS_FILE} is not valid JSON ({e})") from None
        settings = OracleSettings.from_json(settings, str(d / SETTINGS_FILE))
        if not (d / "adapter_config.json").is_file():
            raise OracleDataError(f"{str(d)!r} holds {SETTINGS_FILE} but no adapter (adapter_config.json missing): "
                                  "give a directory saved by `metalens oracle train`")
        subject = load_subject(model if model is not None else settings.model, device=device)
        peft_model = load_adapter(subject.model, str(d))
        peft_model.to(subject.device, subject.dtype).eval()
        proj = None
        if (d / PROJECTION_FILE).exists():
            from safetensors.torch import load_file

            proj = Projection(settings.d_subject, subject.d_model)
            proj.load_state_dict(load_file(str(d / PROJECTION_FILE)))
            proj.to(subject.device, subject.dtype)
        return cls(subject, peft_model, settings, proj)

    def save(self, out: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """Write adapter + settings to `out` (dtype float16/bfloat16 halves the adapter's size)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.peft.save_pretrained(str(out))
        if dtype is not None:
            from safetensors.torch import load_file, save_file

            f = out / "adapter_model.safetensors"
            save_file({k: v.to(dtype) for k, v in load_file(f).items()}, str(f))
        if self.projection is not None:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in self.projection.state_dict().items()}, str(out / PROJECTION_FILE))
        atomic_write_json(out / SETTINGS_FILE, asdict(self.settings))
        return out

    # ------------------------------------------------------------------ forward passes
    @property
    def layers(self) -> list[int]:
        return list(self.settings.layers)

    def layer(self, layer: int | None) -> int:
        """A read layer as a block index: None = the oracle's own; negative counts from the end (-1 = last)."""
        if layer is None:
            return self.layers[0]
        if isinstance(layer, torch.Tensor) and layer.numel() == 1:
            layer = layer.item()
        if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
            raise OracleDataError(f"layer must be an integer, got {layer!r}")
        return self.subject.site(f"resid.{int(layer)}").layer  # SiteError names the valid range

    def adapter(self, on: bool):
        """Context: adapter enabled (oracle) or disabled (the plain subject)."""
        return nullcontext() if on or self.peft is None else self.peft.disable_adapter()

    def read(self, examples: Sequence[Example], layers: Sequence[int]) -> list[torch.Tensor]:
        if self.reader is not None:
            return read_vectors(self.reader, examples, layers)
        with self.adapter(False):
            return read_vectors(self.subject, examples, layers)

    def _batch(self, examples, layers, answers=None, as_text: bool = False):
        tok, sys = self.subject.tokenizer, self.settings.system
        layers = [self.layer(x) for x in layers]  # the prompt says "Layer: 29", never "Layer: -1"
        if as_text:  # text-only control: the context as words where the vectors would go
            prompts = [prompt_ids(tok, L, 0, f"{chat_text(tok, e.context)}\n{e.question}", sys)
                       for e, L in zip(examples, layers)]
            return encode(tok, prompts, answers, self.subject.device), None
        vecs = self.read(examples, layers)
        prompts = [prompt_ids(tok, L, v.shape[0], e.question, sys) for e, L, v in zip(examples, layers, vecs)]
        return encode(tok, prompts, answers, self.subject.device), torch.cat(vecs)  # [n_slots, d]

    def hidden(self, examples, layers, answers=None, adapter: bool = True, as_text: bool = False):
        """Final hidden states [batch, seq, d] of the oracle prompts (+ answers), vectors injected."""
        batch, vectors = self._batch(examples, layers, answers, as_text)
        s = self.settings
        ctx = nullcontext() if vectors is None else inject(
            self.subject.model, vectors, batch.slot_mask, s.inject_layer, s.inject, s.scale, self.projection)
        with ctx, self.adapter(adapter):
            h = self.subject.trunk(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                         use_cache=False).last_hidden_state  # [batch, seq, d]
        return h, batch

    def loss(self, examples: Sequence[Example], layers: Sequence[int], adapter: bool = True) -> torch.Tensor:
        """Mean cross-entropy on the answer tokens (end-of-turn included)."""
        h, batch = self.hidden(examples, layers, [e.answer for e in examples], adapter)
        pred = batch.label_mask[:, 1:]  # [batch, seq-1]: position t predicts token t+1
        logits = self.subject.unembed(h[:, :-1][pred])  # [n_targets, vocab]
        return F.cross_entropy(logits.float(), batch.input_ids[:, 1:][pred])

    @torch.no_grad()
    def choice_probs(self, examples: Sequence[Example], layers: Sequence[int] | None = None, adapter: bool = True,
                     as_text: bool = False, batch_size: int = 16) -> torch.Tensor:
        """P(each choice) from the first answer token's logits, softmaxed over the choices: [n, n_choices]."""
        tok = self.subject.tokenizer
        layers = [self.layer(x) for x in layers] if layers is not None else [self.layers[0]] * len(examples)
        if len(layers) != len(examples):
            raise OracleDataError(f"{len(layers)} layers for {len(examples)} examples")
        for i, e in enumerate(examples):
            if not e.choices or len(e.choices) < 2:
                raise OracleDataError(f"example {i} ({e.task}) has choices {e.choices!r}: scoring needs at least two")
        out = []
        for i in range(0, len(examples), batch_size):
            part = examples[i : i + batch_size]
            h, batch = self.hidden(part, layers[i : i + batch_size], None, adapter, as_text)
            last = h[torch.arange(len(part)), batch.prompt_len - 1]  # [b, d]
            logits = self.subject.unembed(last).float()  # [b, vocab]
            for j, e in enumerate(part):
                ids = [tok(c, add_special_tokens=False)["input_ids"][0] for c in e.choices]
                if len(set(ids)) != len(ids):
                    raise OracleDataError(f"choices {list(e.choices)!r} share a first token; give choices that differ in it")
                out.append(logits[j, ids].softmax(-1).cpu())
        return torch.nn.utils.rnn.pad_sequence(out, batch_first=True) if out else torch.empty(0, 2)

    @torch.no_grad()
    def ask(self, context, question: str, layer: int | None = None, read="all", choices: Sequence[str] | None = None,
            max_new_tokens: int = 32) -> Answer:
        """Answer a question about the subject's activations on `context` (text or chat messages)."""
        layer = self.layer(layer)
        if isinstance(choices, str):
            raise OracleDataError(f"choices must be a list of options, not one string {choices!r}")
        if choices is not None and len(choices) < 2:
            raise OracleDataError(f"choices {list(choices)!r}: give at least two options (one option always gets P=1)")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise OracleDataError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        obj = {"context": context, "question": question, "read": list(read) if isinstance(read, tuple) else read,
               "task": "ask"}
        if choices is not None:
            obj["choices"] = list(choices)
        ex = example_from_dict(obj, "ask")  # OracleDataError names a bad context, question, read or choices
        batch, vectors = self._batch([ex], [layer])
        s = self.settings
        with inject(self.subject.model, vectors, batch.slot_mask, s.inject_layer, s.inject,
                    s.scale, self.projection), self.adapter(True):
            gen = self.subject.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                              max_new_tokens=max_new_tokens, do_sample=False, output_logits=True,
                                              return_dict_in_generate=True,
                                              pad_token_id=self.subject.tokenizer.pad_token_id)
        tok = self.subject.tokenizer
        text = tok.decode(gen.sequences[0, batch.input_ids.shape[1] :], skip_special_tokens=True).strip()
        probs = {}
        if choices:  # the first generated step's raw logits: the same scores choice_probs() computes
            ids = [tok(c, add_special_tokens=False)["input_ids"][0] for c in choices]
            if len(set(ids)) != len(ids):
                raise OracleDataError(f"choices {list(choices)!r} share a first token; give choices that differ in it")
            p = gen.logits[0][0].float()[ids].softmax(-1)
            probs = {c: round(float(x), 4) for c, x in zip(choices, p)}
        return Answer(text, probs, layer, int(vectors.shape[0]))


DEMO_CONTEXTS = [
    ("The cats were sleeping on the warm windowsill.", "Is this sentence in the past tense?"),
    ("Tomorrow she will fly to Tokyo for the conference.", "Is this sentence in the future tense?"),
    ("The city of Paris is in France.", "Is this statement true?"),
    ("I'm thinking about starting a garden in my backyard.", "Does this text mention 'backyard'?"),
    ("I'm thinking about starting a garden in my backyard.", "Does this text mention 'kitchen'?"),
    ("The capital city of Japan is", "Is this about a country?"),
]


def demo_section(con) -> dict:
    """`make demo`: the shipped oracle answers questions about a few contexts' activations."""
    if not (DEFAULT_DIR / SETTINGS_FILE).exists():
        con.print("[bold]oracle[/] no default oracle shipped in this checkout (metalens/oracle/default/)")
        return {"skipped": "no default oracle"}
    o = Oracle.load("default", device="cpu")
    rows = []
    for ctx, q in DEMO_CONTEXTS:
        a = o.ask(ctx, q, read=[-2, None], choices=["Yes", "No"], max_new_tokens=1)
        b = o.ask(ctx, "Which tokens were read here?", read=[-2, None], max_new_tokens=6)
        rows.append({"context": ctx, "question": q, "p_yes": a.probs["Yes"], "read_back": b.text})
        con.print(f"[bold]oracle[/] {ctx!r}\n  {q} P(Yes)={a.probs['Yes']:.2f}   last 2 tokens read back as: {b.text!r}")
    return {"layer": o.layers[0], "answers": rows}
