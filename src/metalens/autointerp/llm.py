"""LLM backends for autointerp: the local model (full logits) or any OpenAI-compatible endpoint.

Both implement the same three calls:

    generate(conversations, max_tokens, temperature, seed, n) -> [[text] * n] * len(conversations)
    position_probs(requests, choices) -> [array [n_offsets, n_choices]]
        for each (prompt, offsets): P(the token that starts at char offset o is c | the prompt before o),
        all offsets of a prompt read from ONE forward pass; o == len(prompt) means the next token.
    n_tokens(text) -> int

`LocalLLM` reads exact probabilities from the logits. `EndpointLLM` reads them from the
completions API's `echo` + `logprobs` (top-k per position; a choice outside the top-k counts as
probability 0), with timeouts, retries with exponential backoff, a concurrency limit and a
response cache keyed by the request. `metalens serve` (server.py) exposes a LocalLLM as such an
endpoint, so the HTTP path is tested against a real server.
"""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch

from ..errors import MetalensError
from ..models import Subject

Messages = list[dict]  # [{"role": "user", "content": "..."}]


class LLMError(MetalensError, RuntimeError):
    pass


class LLM(Protocol):
    name: str

    def generate(
        self, conversations: Sequence[Messages], max_tokens: int = 64, temperature: float = 0.0, seed: int = 0, n: int = 1
    ) -> list[list[str]]: ...

    def position_probs(
        self, requests: Sequence[tuple[str, Sequence[int]]], choices: Sequence[str]
    ) -> list[np.ndarray]: ...

    def n_tokens(self, text: str) -> int: ...


# ---- local ---------------------------------------------------------------------------------------
class LocalLLM:
    """A Subject used as an LLM: exact next-token probabilities from its logits."""

    def __init__(self, subject: Subject, batch_size: int = 8):
        self.subject = subject
        self.name = subject.name
        self.batch_size = batch_size
        self.lock = threading.Lock()  # one forward pass at a time (the server calls from threads)

    @property
    def tokenizer(self):
        return self.subject.tokenizer

    def n_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def choice_ids(self, choices: Sequence[str]) -> list[int]:
        ids = []
        for c in choices:
            t = self.tokenizer(c, add_special_tokens=False)["input_ids"]
            if len(t) != 1:
                raise LLMError(f"choice {c!r} is {len(t)} tokens for {self.name}'s tokenizer; choices must be one token each")
            ids.append(t[0])
        return ids

    def encode(self, prompts: Sequence[str]):
        tok = self.tokenizer
        tok.padding_side = "right"
        return tok(list(prompts), return_tensors="pt", padding=True, return_offsets_mapping=True)

    @torch.no_grad()
    def hidden(self, enc) -> torch.Tensor:
        """Final hidden states [b, s, d] (after the final norm) of a right-padded batch."""
        dev = self.subject.device
        with self.lock:
            return self.subject.model.base_model(
                input_ids=enc["input_ids"].to(dev), attention_mask=enc["attention_mask"].to(dev), use_cache=False
            ).last_hidden_state

    @torch.no_grad()
    def logits(self, prompts: Sequence[str], rows: Sequence[Sequence[int]] | None = None):
        """(logits float32 on CPU, encoding): [b, s, vocab] for all rows, or per prompt [len(rows[b]), vocab]
        for the rows named (the unembedding then runs on those rows only)."""
        enc = self.encode(prompts)
        h = self.hidden(enc)  # [b, s, d]
        head = self.subject.model.get_output_embeddings()
        if rows is None:
            return head(h).float().cpu(), enc
        return [head(h[b, list(r)]).float().cpu() for b, r in enumerate(rows)], enc

    @staticmethod
    def logit_rows(offsets: Sequence[int], offset_mapping: torch.Tensor, mask: torch.Tensor, prompt: str) -> list[int]:
        """For each char offset, the row whose logits predict the token starting there."""
        n = int(mask.sum())
        starts = {}
        for j in range(n):
            a, b = offset_mapping[j].tolist()
            if b > a:
                starts.setdefault(a, j)
        rows = []
        for o in offsets:
            if o == len(prompt):
                rows.append(n - 1)
            elif o in starts and starts[o] > 0:
                rows.append(starts[o] - 1)
            else:
                raise LLMError(
                    f"no token starts at char {o} of the prompt (near {prompt[max(0, o - 10):o + 10]!r}); "
                    "offsets must fall on token boundaries (e.g. right after a tab or newline)"
                )
        return rows

    def position_probs(self, requests: Sequence[tuple[str, Sequence[int]]], choices: Sequence[str]) -> list[np.ndarray]:
        ids = torch.tensor(self.choice_ids(choices))
        out: list[np.ndarray] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start : start + self.batch_size]
            enc = self.encode([p for p, _ in chunk])
            rows = [self.logit_rows(o, enc["offset_mapping"][b], enc["attention_mask"][b], p) for b, (p, o) in enumerate(chunk)]
            logits, _ = self.logits([p for p, _ in chunk], rows)  # per prompt [n_offsets, vocab]
            for lg in logits:
                out.append(lg.softmax(-1)[:, ids].numpy().astype(np.float64))  # [n_offsets, n_choices]
        return out

    @torch.no_grad()
    def generate(
        self, conversations: Sequence[Messages], max_tokens: int = 64, temperature: float = 0.0, seed: int = 0, n: int = 1
    ) -> list[list[str]]:
        s, tok = self.subject, self.tokenizer
        out = []
        for i, conv in enumerate(conversations):
            text = s.chat(conv)
            enc = tok(text, return_tensors="pt", add_special_tokens=False).to(s.device)
            kw = dict(do_sample=True, temperature=temperature, top_p=1.0, top_k=0) if temperature > 0 else dict(do_sample=False)
            with self.lock:
                torch.manual_seed(seed + 1000003 * i)
                gen = s.model.generate(
                    **enc, max_new_tokens=max_tokens, num_return_sequences=n, pad_token_id=tok.pad_token_id, **kw
                )  # [n, prompt + new]
            new = gen[:, enc["input_ids"].shape[1] :]
            out.append([tok.decode(row, skip_special_tokens=True).strip() for row in new])
        return out

    @torch.no_grad()
    def complete(
        self, prompt: str, max_tokens: int = 16, temperature: float = 0.0, seed: int = 0, top_k: int = 0
    ) -> dict:
        """Raw completion with per-token logprobs for prompt + generated tokens (what the server echoes).

        Returns {text, tokens, text_offset, token_logprobs, top_logprobs}; entry j describes token j of
        prompt+completion: its logprob given everything before it and the top_k alternatives there.
        """
        s, tok = self.subject, self.tokenizer
        enc = tok(prompt, return_tensors="pt", return_offsets_mapping=True)
        ids = enc["input_ids"].to(s.device)  # [1, p]
        if max_tokens > 0:
            kw = dict(do_sample=True, temperature=temperature, top_k=0) if temperature > 0 else dict(do_sample=False)
            with self.lock:
                torch.manual_seed(seed)
                full = s.model.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                    pad_token_id=tok.pad_token_id, **kw,
                )  # [1, p + new]
        else:
            full = ids
        new = full[0, ids.shape[1] :].tolist()
        if tok.eos_token_id in new:
            new = new[: new.index(tok.eos_token_id)]
        seq = torch.tensor([ids[0].tolist() + new], device=s.device)
        with self.lock:
            logp = s.model(input_ids=seq, use_cache=False).logits.float().log_softmax(-1)[0].cpu()  # [p + new, vocab]
        all_ids = seq[0].tolist()
        text = tok.decode(new, skip_special_tokens=True)
        offsets = [int(a) for a, _ in enc["offset_mapping"][0].tolist()]
        offsets += [len(prompt) + len(tok.decode(new[:i], skip_special_tokens=True)) for i in range(len(new))]
        tokens, token_lp, top = [], [], []
        for j, t in enumerate(all_ids):
            tokens.append(tok.decode([t]))
            if j == 0:
                token_lp.append(None)
                top.append(None)
                continue
            token_lp.append(float(logp[j - 1, t]))
            if top_k > 0:
                v, i = logp[j - 1].topk(min(top_k, logp.shape[1]))
                top.append({tok.decode([k]): float(x) for k, x in zip(i.tolist(), v.tolist())})
            else:
                top.append(None)
        return dict(text=text, tokens=tokens, text_offset=offsets, token_logprobs=token_lp, top_logprobs=top,
                    n_prompt=ids.shape[1], n_new=len(new))


# ---- HTTP endpoint ------------------------------------------------------------------------------
@dataclass(frozen=True)
class EndpointConfig:
    base_url: str = "http://127.0.0.1:8000/v1"
    """OpenAI-compatible base URL (ending in /v1)"""
    model: str = "default"
    """model name sent with every request"""
    api_key: str | None = None
    """sent as a Bearer token when set"""
    timeout: float = 60.0
    """seconds per request"""
    max_retries: int = 4
    """retries on timeouts, connection errors, 429 and 5xx (not on 4xx or a non-JSON body)"""
    backoff: float = 0.5
    """first retry waits this many seconds, doubling each time (plus up to 25% jitter)"""
    concurrency: int = 4
    """requests in flight at once"""
    logprobs: int = 20
    """top-k logprobs asked per position (a choice outside the top-k counts as probability 0)"""
    cache_path: str | None = None
    """SQLite file for the response cache (None: in memory only)"""


class ResponseCache:
    """request hash -> response JSON, in memory and optionally in one SQLite file."""

    def __init__(self, path: str | None = None):
        self.mem: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.conn = None
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(path, timeout=30, check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    @staticmethod
    def key(route: str, body: dict) -> str:
        return hashlib.sha256(json.dumps([route, body], sort_keys=True).encode()).hexdigest()

    def get(self, key: str) -> dict | None:
        with self.lock:
            if key in self.mem:
                return self.mem[key]
            if self.conn is not None:
                row = self.conn.execute("SELECT value FROM cache WHERE key=?", (key,)).fetchone()
                if row:
                    self.mem[key] = json.loads(row[0])
                    return self.mem[key]
        return None

    def put(self, key: str, value: dict) -> None:
        with self.lock:
            self.mem[key] = value
            if self.conn is not None:
                with self.conn:
                    self.conn.execute("INSERT OR REPLACE INTO cache VALUES (?,?)", (key, json.dumps(value)))


class EndpointLLM:
    """Any OpenAI-compatible server (vLLM, llama.cpp server, `metalens serve`, a hosted API)."""

    def __init__(self, config: EndpointConfig | None = None, **kw):
        import httpx

        self.config = config or EndpointConfig(**kw)
        self.name = f"{self.config.model}@{self.config.base_url}"
        headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
        self.client = httpx.Client(base_url=self.config.base_url.rstrip("/"), timeout=self.config.timeout, headers=headers)
        self.cache = ResponseCache(self.config.cache_path)
        self.n_requests = 0  # requests that reached the network (cache misses), retries included
        self._count = threading.Lock()

    def close(self) -> None:
        self.client.close()

    def post(self, route: str, body: dict) -> dict:
        """POST with cache, retries and backoff; a clear LLMError when it cannot succeed."""
        import httpx

        cfg = self.config
        body = {"model": cfg.model, **body}
        key = self.cache.key(route, body)
        if (hit := self.cache.get(key)) is not None:
            return hit
        last = ""
        for attempt in range(cfg.max_retries + 1):
            if attempt:
                wait = cfg.backoff * 2 ** (attempt - 1)
                time.sleep(wait * (1 + 0.25 * random.random()))
            with self._count:
                self.n_requests += 1
            try:
                r = self.client.post(route, json=body)
            except httpx.TimeoutException:
                last = f"timed out after {cfg.timeout}s"
                continue
            except httpx.TransportError as e:
                last = f"connection failed: {e!r}"
                continue
            if r.status_code == 429 or r.status_code >= 500:
                last = f"HTTP {r.status_code}: {r.text[:200]!r}"
                continue
            if r.status_code >= 400:
                raise LLMError(f"{cfg.base_url}{route} rejected the request: HTTP {r.status_code}: {r.text[:300]!r}")
            try:
                data = r.json()
            except ValueError:
                raise LLMError(
                    f"{cfg.base_url}{route} returned HTTP {r.status_code} with a body that is not JSON: {r.text[:200]!r}"
                ) from None
            if not isinstance(data, dict) or not isinstance(data.get("choices"), list) or not data["choices"]:
                raise LLMError(f"{cfg.base_url}{route} returned JSON without a 'choices' list: {str(data)[:200]!r}")
            self.cache.put(key, data)
            return data
        raise LLMError(f"{cfg.base_url}{route} failed after {cfg.max_retries + 1} attempts; last error: {last}")

    def map(self, fn, items: Sequence) -> list:
        if len(items) <= 1 or self.config.concurrency <= 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(self.config.concurrency) as pool:
            return list(pool.map(fn, items))

    def generate(
        self, conversations: Sequence[Messages], max_tokens: int = 64, temperature: float = 0.0, seed: int = 0, n: int = 1
    ) -> list[list[str]]:
        """One request per sample (seed + i), so every sample is cached and reproducible on its own."""
        jobs = [(c, i) for c in range(len(conversations)) for i in range(n)]

        def one(job):
            c, i = job
            body = dict(messages=list(conversations[c]), max_tokens=max_tokens, temperature=temperature,
                        seed=seed + 1000003 * c + i)
            choice = self.post("/chat/completions", body)["choices"][0]
            try:
                return choice["message"]["content"] or ""
            except (KeyError, TypeError):
                raise LLMError(f"chat completion choice has no message.content: {str(choice)[:200]!r}") from None

        texts = self.map(one, jobs)
        return [texts[c * n : (c + 1) * n] for c in range(len(conversations))]

    def echo(self, prompt: str) -> dict:
        body = dict(prompt=prompt, max_tokens=1, temperature=0.0, echo=True, logprobs=self.config.logprobs)
        lp = self.post("/completions", body)["choices"][0].get("logprobs")
        if not isinstance(lp, dict) or not all(k in lp for k in ("tokens", "top_logprobs", "text_offset")):
            raise LLMError(
                f"{self.config.base_url}/completions gave no echo logprobs (tokens, top_logprobs, text_offset); "
                "the endpoint must support echo=true with logprobs on the completions API"
            )
        return lp

    def n_tokens(self, text: str) -> int:
        lp = self.echo(text)
        return sum(1 for o in lp["text_offset"] if o < len(text))

    def position_probs(self, requests: Sequence[tuple[str, Sequence[int]]], choices: Sequence[str]) -> list[np.ndarray]:
        def one(req):
            prompt, offsets = req
            lp = self.echo(prompt)
            where = {}
            for j, o in enumerate(lp["text_offset"]):
                if lp["tokens"][j]:
                    where.setdefault(o, j)
            rows = []
            for o in offsets:
                j = where.get(o)
                top = lp["top_logprobs"][j] if j is not None else None
                if top is None:
                    raise LLMError(f"no token with logprobs starts at char {o} of the prompt (near {prompt[max(0, o - 10):o + 10]!r})")
                rows.append([float(np.exp(top[c])) if c in top else 0.0 for c in choices])
            return np.asarray(rows, dtype=np.float64).reshape(len(offsets), len(choices))

        return self.map(one, list(requests))
