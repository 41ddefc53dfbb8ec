"""Pages that run the model: try a feature on your text, ask the oracle, watch a generation, steer.

The subject is shared, and hooks are global to it, so every forward pass here holds
`state.model_lock`. The live monitor runs `metalens.monitor.watch` in a worker thread and streams its readings
over server-sent events (one `token` event per generated token, then `done`); closing the page
or pressing Stop sets the generation's stop event.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from urllib.parse import parse_qs

import torch

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from ..capture import capture
from ..errors import DataError
from ..intervene import add
from ..features import Feature
from ..io import dumps
from ..monitor import watch
from ..steer import clamp_feature
from .cards import shade
from .sources import SaeSource
from .state import State

MAX_TEXT = 4000  # characters of user text a request may send
MAX_NEW_TOKENS = 256


async def form(request: Request) -> dict[str, str]:
    """An urlencoded POST body as {field: value} (the last value of a repeated field)."""
    body = (await request.body()).decode("utf-8", "replace")
    return {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}


def clip(text: str, what: str, n: int = MAX_TEXT) -> str:
    if len(text) > n:
        raise DataError(f"{what} is {len(text)} characters; the dashboard takes at most {n}")
    return text


def int_in(value: str, what: str, lo: int, hi: int) -> int:
    try:
        v = int(value)
    except ValueError:
        raise DataError(f"{what} must be an integer; got {value!r}") from None
    if not lo <= v <= hi:
        raise DataError(f"{what} must be in {lo}..{hi}; got {v}")
    return v


def float_of(value: str, what: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise DataError(f"{what} must be a number; got {value!r}") from None


class FeatureReader:
    """A monitor reading from a core Feature (SAE latent, neuron, probe direction): .name, .site, .threshold,
    __call__(acts [n, d]) -> [n]."""

    def __init__(self, feature: Feature, threshold: float | None, name: str):
        self.feature, self.name, self.site, self.threshold = feature, name, feature.site, threshold

    def __call__(self, acts: torch.Tensor) -> torch.Tensor:
        return self.feature(acts)


def readers_from(state: State, spec: str) -> list[FeatureReader]:
    """"sae0:12, sae0:40>2.5" -> readers. The threshold defaults to a probe's own, else half the feature's max
    on the store. An empty spec reads every probe the dashboard was given."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        parts = [f"{s.key}:{i}" for s in state.sources.values() if s.kind == "directions" for i in range(s.n_features)]
    out = []
    for part in parts:
        ref, _, thr = part.partition(">")
        src, i = state.parse_ref(ref)
        own = getattr(src, "thresholds", [None] * src.n_features)[i]
        if thr:
            threshold = float_of(thr, f"threshold in {part!r}")
        elif own is not None:
            threshold = float(own)
        else:
            m = float(src.summary().max_act[i])
            threshold = 0.5 * m if m > 0 else None
        out.append(FeatureReader(src.feature(i), threshold, name=f"{src.key}:{i}"))
    return out


def add_live_routes(app: FastAPI, state: State, page) -> None:
    @app.get("/try", response_class=HTMLResponse)
    def try_it(request: Request, feature: str = "", text: str = ""):
        result = None
        if feature and text:
            src, i = state.parse_ref(feature)
            clip(text, "text")
            s = state.subject()
            with state.model_lock:
                acts = capture(s, [text], [src.site])
                values = src.feature(i)(acts[src.site]).float().tolist()  # [n_tokens]
            tokens = [state.decode(int(t)) for t in acts.token_ids.tolist()]
            vmax = max(float(src.summary().max_act[i]), max(values, default=0.0))
            result = dict(id=src.feature_id(i), tokens=shade(tokens, values, vmax), max=max(values, default=0.0))
        return page(request, "try.html", feature=feature, text=text, result=result, oracle=state.oracle_loader is not None,
                    title="try it")

    @app.post("/oracle", response_class=HTMLResponse)
    async def oracle(request: Request):
        f = await form(request)
        context, question = clip(f.get("context", ""), "context"), clip(f.get("question", ""), "question", 500)
        choices = [c.strip() for c in f.get("choices", "Yes,No").split(",") if c.strip()]
        feature = f.get("feature", "")
        if not context.strip() or not question.strip():
            raise DataError("the oracle needs a context and a question")
        if len(choices) < 2:
            raise DataError(f"give at least two comma-separated choices; got {f.get('choices')!r}")
        result = await asyncio.to_thread(ask_oracle, state, context, question, choices, feature)
        return page(request, "try.html", feature="", text="", result=None, oracle=True, answer=result,
                    context=context, question=question, choices=",".join(choices), title="oracle")

    @app.get("/monitor", response_class=HTMLResponse)
    def monitor(request: Request, features: str = ""):
        return page(request, "monitor.html", features=features, title="live monitor")

    @app.get("/api/monitor/stream")
    async def stream(prompt: str, job: str, features: str = "", max_new_tokens: int = 48, chat: int = 1):
        clip(prompt, "prompt")
        n = int_in(str(max_new_tokens), "max_new_tokens", 1, MAX_NEW_TOKENS)
        readers = readers_from(state, features)
        stop = threading.Event()
        state.jobs[job[:64]] = stop
        q: queue.Queue = queue.Queue()

        def work():
            t0, count = time.perf_counter(), 0
            try:
                s = state.subject()
                with state.model_lock:
                    for r in watch(s, prompt, readers, max_new_tokens=n, chat=bool(chat), stop=stop):
                        count += 1
                        q.put(("token", dict(token=r.token, position=r.position, readings=r.readings, flags=r.flags)))
                q.put(("done", dict(tokens=count, stopped=stop.is_set(), seconds=time.perf_counter() - t0)))
            except Exception as e:  # noqa: BLE001 - shown to the user, the stream ends cleanly
                q.put(("error", dict(message=f"{type(e).__name__}: {e}")))
            finally:
                q.put(None)

        threading.Thread(target=work, daemon=True).start()
        thresholds = {r.name: r.threshold for r in readers}

        async def events():
            try:
                yield f"event: start\ndata: {dumps(dict(readers=thresholds), indent=None)}\n\n"
                while True:
                    item = await asyncio.to_thread(q.get)
                    if item is None:
                        break
                    kind, data = item
                    yield f"event: {kind}\ndata: {dumps(data, indent=None)}\n\n"
            finally:
                stop.set()
                state.jobs.pop(job[:64], None)

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/api/monitor/stop")
    def stop(job: str):
        ev = state.jobs.get(job[:64])
        if ev is not None:
            ev.set()
        return JSONResponse({"stopped": ev is not None})

    @app.get("/steer", response_class=HTMLResponse)
    def steer_form(request: Request, feature: str = ""):
        return page(request, "steer.html", feature=feature, result=None, f={}, title="steer")

    @app.post("/steer", response_class=HTMLResponse)
    async def steer(request: Request):
        f = await form(request)
        result = await asyncio.to_thread(run_steer, state, f)
        return page(request, "steer.html", feature=f.get("feature", ""), result=result, f=f, title="steer")


def ask_oracle(state: State, context: str, question: str, choices: list[str], feature: str = "") -> dict:
    """P(choice) from the oracle reading the context's activations, and from the text-only control; recorded."""
    from ..oracle.tasks import Example

    o = state.oracle()
    ex = [Example(context, question, "", "all", tuple(choices), "dashboard")]
    with state.oracle_lock:
        p = o.choice_probs(ex)[0].tolist()
        p_text = o.choice_probs(ex, as_text=True)[0].tolist()
    probs, control = dict(zip(choices, p)), dict(zip(choices, p_text))
    answer = max(probs, key=probs.get)
    task = f"feature:{feature}" if feature else "dashboard"
    db = state.db()
    try:
        db.add_oracle_answer(None, context, question, answer, probs, task=task)
        db.add_oracle_answer(None, context, question, max(control, key=control.get), control, task=f"{task}/text-only")
    finally:
        db.close()
    return dict(answer=answer, probs=probs, control=control, control_answer=max(control, key=control.get))


def run_steer(state: State, f: dict) -> dict:
    """Generations without and with the intervention, side by side; the settings and outputs recorded as a run."""
    src, i = state.parse_ref(f.get("feature", ""))
    mode = f.get("mode", "add")
    if mode not in ("add", "clamp"):
        raise DataError(f"mode must be 'add' or 'clamp'; got {mode!r}")
    strength = float_of(f.get("strength", "4"), "strength")
    prompt = clip(f.get("prompt", ""), "prompt")
    if not prompt.strip():
        raise DataError("give a prompt to generate from")
    n = int_in(f.get("max_new_tokens", "32"), "max_new_tokens", 1, MAX_NEW_TOKENS)
    s = state.subject()
    if mode == "clamp":
        if not isinstance(src, SaeSource):
            raise DataError(f"clamping needs an SAE latent; {src.key} holds {src.kind}: use mode 'add'")
        intervention = lambda: clamp_feature(s, src.site, src.sae(), i, strength)  # noqa: E731
    else:
        direction = src.direction(i)
        if direction is None:
            raise DataError(f"{src.feature_id(i)} has no write direction (a neuron); pick an SAE latent or a probe")
        intervention = lambda: add(s, src.site, direction, scale=strength)  # noqa: E731
    config = dict(feature=src.feature_id(i), source=src.label, mode=mode, strength=strength, prompt=prompt,
                  max_new_tokens=n, model=s.name, greedy=True)
    db = state.db()
    try:
        with db.run("dashboard.steer", config) as run, state.model_lock:
            plain = s.generate(prompt, max_new_tokens=n)
            with intervention():
                steered = s.generate(prompt, max_new_tokens=n)
            run.outputs.update(plain=plain, steered=steered)
    finally:
        db.close()
    return dict(run=run.id, plain=plain, steered=steered, config=config)

