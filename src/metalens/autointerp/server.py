"""`metalens serve`: an OpenAI-compatible server for a local model (localhost by default).

    POST /v1/chat/completions   {messages, max_tokens, temperature, seed, n, stop}
    POST /v1/completions        {prompt (str | [str]), max_tokens, temperature, seed, echo, logprobs, stop}
    GET  /v1/models

`/v1/completions` with `echo=true, logprobs=k` returns, for every prompt token, its logprob and the
top-k alternatives at that position (the legacy OpenAI format vLLM also serves); that is what
`EndpointLLM.position_probs` reads, so simulation through the endpoint is one request per prompt.
"""

from __future__ import annotations

import time
import uuid

from fastapi import FastAPI, HTTPException, Request

from .llm import LocalLLM


def _stop(text: str, stop) -> tuple[str, bool]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    cut = min((text.index(s) for s in stops if s and s in text), default=None)
    return (text, False) if cut is None else (text[:cut], True)


def make_app(llm: LocalLLM, max_logprobs: int = 20):
    app = FastAPI(title=f"metalens serve: {llm.name}")
    created = int(time.time())

    async def body_of(request: Request) -> dict:
        try:
            body = await request.json()
        except ValueError:
            raise HTTPException(400, "request body is not JSON") from None
        if not isinstance(body, dict):
            raise HTTPException(400, "request body must be a JSON object")
        return body

    def num(body: dict, key: str, default, kind=int, lo=None, hi=None):
        v = body.get(key, default)
        if v is None:
            return default
        try:
            v = kind(v)
        except (TypeError, ValueError):
            raise HTTPException(400, f"{key} must be a {kind.__name__}; got {body[key]!r}") from None
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise HTTPException(400, f"{key} must be in [{lo}, {hi}]; got {v}")
        return v

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": llm.name, "object": "model", "created": created, "owned_by": "metalens"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await body_of(request)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) and "content" in m for m in messages):
            raise HTTPException(400, "messages must be a non-empty list of {role, content} objects")
        max_tokens = num(body, "max_tokens", 64, int, 1, 4096)
        temperature = num(body, "temperature", 0.0, float, 0.0, 5.0)
        n = num(body, "n", 1, int, 1, 16)
        seed = num(body, "seed", 0, int)
        import anyio

        texts = (await anyio.to_thread.run_sync(lambda: llm.generate([messages], max_tokens, temperature, seed, n)))[0]
        choices = []
        for i, t in enumerate(texts):
            t, stopped = _stop(t, body.get("stop"))
            choices.append({"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"})
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
                "model": llm.name, "choices": choices}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await body_of(request)
        prompts = body.get("prompt")
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise HTTPException(400, "prompt must be a string or a non-empty list of strings")
        max_tokens = num(body, "max_tokens", 16, int, 0, 4096)
        temperature = num(body, "temperature", 0.0, float, 0.0, 5.0)
        seed = num(body, "seed", 0, int)
        k = body.get("logprobs")
        k = None if k is None else num(body, "logprobs", 0, int, 0, max_logprobs)
        echo = bool(body.get("echo", False))
        import anyio

        choices = []
        for i, p in enumerate(prompts):
            r = await anyio.to_thread.run_sync(lambda: llm.complete(p, max_tokens, temperature, seed, k or 0))
            text, stopped = _stop(r["text"], body.get("stop"))
            first = 0 if echo else r["n_prompt"]
            logprobs = None
            if k is not None:
                logprobs = {key: r[key][first:] for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}
                if not echo:  # offsets count from the start of the completion
                    logprobs["text_offset"] = [o - len(p) for o in logprobs["text_offset"]]
            choices.append({"index": i, "text": (p if echo else "") + text, "logprobs": logprobs,
                            "finish_reason": "stop" if stopped or r["n_new"] < max_tokens else "length"})
        return {"id": f"cmpl-{uuid.uuid4().hex[:12]}", "object": "text_completion", "created": int(time.time()),
                "model": llm.name, "choices": choices}

    return app


def serve(llm: LocalLLM, host: str = "127.0.0.1", port: int = 8000, max_logprobs: int = 20, log_level: str = "warning"):
    import uvicorn

    uvicorn.run(make_app(llm, max_logprobs), host=host, port=port, log_level=log_level)
