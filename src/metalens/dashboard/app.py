"""The dashboard's web app: `create_app(db_path, stores, saes, subject_loader)`, served on 127.0.0.1.

Read-only pages (features, search, runs) live here; the pages that run the model (try it, the
oracle console, the live monitor, steering) are in `live.py`. Every page is a Jinja2 template
with autoescaping on: text from models and datasets is always escaped. No endpoint takes a path:
features are named by source and index, plots by run id and number, and only the files a run in
the given database lists are ever served.
"""

from __future__ import annotations

import json
import math
import os
from urllib.parse import urlsplit
from pathlib import Path
from typing import Callable, Sequence

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from ..errors import DataError, MetalensError
from ..models import Subject
from ..store import StoreError
from . import search as searching
from .cards import build_card, shade
from .sources import SaeSource, open_sources
from .state import State

HERE = Path(__file__).parent
PAGE = 100  # rows per page of the feature index


def templates() -> Jinja2Templates:
    t = Jinja2Templates(directory=str(HERE / "templates"))
    t.env.autoescape = True  # every {{ }} is escaped, whatever the file's extension
    t.env.filters["pct"] = lambda x: "–" if x is None else f"{100 * x:.3g}%"
    t.env.filters["num"] = lambda x, n=3: "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{n}f}"
    t.env.globals["shade"] = shade
    return t


def run_plots(run: dict, limit: int = 50) -> list[Path]:
    """PNG files a run lists in its outputs: a .png path, or the .png files in a listed directory (one level)."""
    out: list[Path] = []
    for value in run["outputs"].values():
        if not isinstance(value, str) or len(value) > 4096:
            continue
        p = Path(value)
        if p.suffix.lower() == ".png" and p.is_file():
            out.append(p)
        elif p.is_dir():
            out += sorted(q for q in p.glob("*.png") if q.is_file())
            out += sorted(q for q in p.glob("*/*.png") if q.is_file())
    return out[:limit]


def create_app(db_path: str | os.PathLike, stores: Sequence[str | os.PathLike] = (), saes: Sequence[str | os.PathLike] = (),
               subject_loader: Callable[[], Subject] | None = None, probes: Sequence = (),
               oracle_loader: Callable[[], object] | None = None) -> FastAPI:
    """The dashboard over a results database, activation stores and SAE directories.

    subject_loader() -> Subject is called once, on first need (default: the default model on CPU).
    probes: Probe-like objects (.site, .weight, .bias, .name, .threshold) shown as directions.
    oracle_loader() -> Oracle, for the oracle console (None: no oracle).
    """
    if subject_loader is None:
        from ..models import load_subject

        subject_loader = lambda: load_subject(device="cpu")  # noqa: E731
    state = State(Path(db_path), open_sources(list(stores), list(saes), list(probes)), subject_loader, oracle_loader)
    app = FastAPI(title="metalens dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.dash = state
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    tpl = templates()

    def page(request: Request, name: str, status_code: int = 200, **ctx) -> HTMLResponse:
        ctx.setdefault("title", "metalens")
        return tpl.TemplateResponse(request, name, dict(sources=state.sources, **ctx), status_code=status_code)

    @app.middleware("http")
    async def same_origin_posts(request: Request, call_next):
        """A page on another site cannot make this one run the model or write the database (no CSRF)."""
        origin = request.headers.get("origin")
        if request.method == "POST" and origin and urlsplit(origin).netloc != request.headers.get("host"):
            return JSONResponse({"error": f"cross-origin POST from {origin} refused"}, status_code=403)
        return await call_next(request)

    @app.exception_handler(MetalensError)
    @app.exception_handler(StoreError)
    async def expected(request: Request, exc: Exception):
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": str(exc)}, status_code=400)
        return page(request, "error.html", 400, message=str(exc), title="error")

    @app.get("/", response_class=HTMLResponse)
    def home(request: Request):
        db = state.db()
        try:
            n_runs = len(db.runs())
            n_expl = db.conn.execute("SELECT COUNT(*) FROM explanations").fetchone()[0]
        finally:
            db.close()
        return page(request, "home.html", n_runs=n_runs, n_expl=n_expl, db_path=state.db_path)

    @app.get("/features", response_class=HTMLResponse)
    def features(request: Request, source: str = "", sort: str = "density", desc: int = 1, page_no: int = 0):
        if source:
            state.source(source)
        rows, total = state.feature_rows(source or None, sort, bool(desc), page_no * PAGE, PAGE)
        return page(request, "features.html", rows=rows, total=total, source=source, sort=sort, desc=desc,
                    page_no=page_no, n_pages=max(1, math.ceil(total / PAGE)), title="features")

    def card_for(key: str, i: int) -> dict:
        src = state.source(key)
        src.check(i)
        return build_card(src, i, state.decode, state.lens)

    @app.get("/api/feature/{key}/{i}")
    def feature_json(key: str, i: int):
        return card_for(key, i)

    @app.get("/feature/{key}/{i}", response_class=HTMLResponse)
    def feature(request: Request, key: str, i: int):
        card = card_for(key, i)
        src = state.source(key)
        db = state.db()
        try:
            expl = db.explanations(card.id)
            tasks = (f"feature:{card.id}", f"feature:{card.id}/text-only")
            answers = [dict(a) | {"probs": json.loads(a["probs"] or "null")} for a in db.conn.execute(
                "SELECT * FROM oracle_answers WHERE task IN (?, ?) ORDER BY id", tasks)]
        finally:
            db.close()
        for e in expl:
            e["control"] = (e["explainer"] or "").startswith("control:")
            e["by_metric"] = {f"{s['metric']}/{s['split']}": s["value"] for s in e["scores"]}
        corr = [dict(index=j, id=src.feature_id(j), value=v, n=n) for j, v, n in src.correlated(i)]
        top_context = "".join(card.top[0]["tokens"]) if card.top else ""
        return page(request, "feature.html", card=card, src=src, explanations=expl, answers=answers, correlated=corr,
                    corr_kind="Jaccard" if isinstance(src, SaeSource) else "Pearson r", top_context=top_context,
                    title=card.id)

    @app.get("/search", response_class=HTMLResponse)
    def search(request: Request, q: str = "", mode: str = "text"):
        rows, toks = [], []
        if q and mode == "token":
            rows, toks = searching.by_token(state, q)
        elif q:
            rows = searching.by_text(state, q)
        return page(request, "search.html", q=q, mode=mode, rows=rows, toks=toks, title="search")

    @app.get("/runs", response_class=HTMLResponse)
    def runs(request: Request):
        db = state.db()
        try:
            rows = db.runs()
        finally:
            db.close()
        return page(request, "runs.html", runs=list(reversed(rows)), title="runs")

    def get_run(run_id: int) -> dict:
        db = state.db()
        try:
            found = [r for r in db.runs() if r["id"] == run_id]
        finally:
            db.close()
        if not found:
            raise DataError(f"no run {run_id} in {state.db_path}")
        return found[0]

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    def run(request: Request, run_id: int):
        r = get_run(run_id)
        return page(request, "run.html", run=r, plots=run_plots(r), title=f"run {run_id}")

    @app.get("/runs/{run_id}/plot/{n}")
    def plot(run_id: int, n: int):
        plots = run_plots(get_run(run_id))
        if not 0 <= n < len(plots):
            return JSONResponse({"error": f"run {run_id} has {len(plots)} plots"}, status_code=404)
        return FileResponse(plots[n], media_type="image/png")

    from .live import add_live_routes

    add_live_routes(app, state, page)
    return app


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8765, log_level: str = "warning") -> None:
    """Run the app with uvicorn (blocking). Binding anywhere but localhost exposes the model to the network."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level)
