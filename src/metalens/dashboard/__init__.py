"""The metalens dashboard: a local web app over the results database, activation stores and SAEs.

    metalens dashboard --db results.sqlite --store acts/ --sae sae/ [--port 8765]

    from metalens.dashboard import create_app, serve
    serve(create_app("results.sqlite", ["acts/"], ["sae/"], subject_loader=lambda: load_subject()))

Feature pages (SAE latents, neurons, probe directions), search by explanation or token, try a
feature or the oracle on your own text, a live monitor that streams a generation token by token,
a steering playground and the runs with their plots. See docs/dashboard.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from .app import create_app, serve

__all__ = ["create_app", "serve", "run", "main", "loaders"]

TINY = "tiny"  # --model tiny: the random test model (metalens.testing.tiny_llama), for tests and demos


def loaders(model: str | None, oracle: str | None, device: str = "cpu"):
    """(subject_loader, oracle_loader) for a model name or directory ("tiny": the random test model)."""
    if model == TINY:
        from ..testing import tiny_llama

        def tiny_oracle():
            from ..adapters import add_lora
            from ..oracle.ask import Oracle

            s = tiny_llama()  # its own copy: the LoRA wraps this model in place
            settings = dict(layers=[1], inject_layer=1, inject="add", scale=1.0, system="", d_subject=s.d_model)
            return Oracle(s, add_lora(s.model), settings)

        return tiny_llama, (tiny_oracle if oracle else None)

    from ..models import load_subject

    def oracle_loader():
        from ..oracle.ask import Oracle

        return Oracle.load(oracle, model=model, device=device)

    return (lambda: load_subject(model, device=device)), (oracle_loader if oracle else None)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="metalens dashboard", description="Serve the metalens dashboard on 127.0.0.1.")
    p.add_argument("--db", default=None, help="results database (default: $METALENS_RESULTS or the cache's)")
    p.add_argument("--store", action="append", default=[], help="activation store directory (repeatable)")
    p.add_argument("--sae", action="append", default=[], help="SAE directory (repeatable); read on the store holding its site")
    p.add_argument("--probe", action="append", default=[], help="probe directory or shipped name (repeatable)")
    p.add_argument("--model", default=None, help="local HF model dir; default: SmolLM2-135M-Instruct")
    p.add_argument("--oracle", default="default", help="oracle adapter directory or 'default'")
    p.add_argument("--no-oracle", action="store_true", help="do not offer the oracle console")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--port", type=int, default=8765, help="TCP port (default 8765)")
    p.add_argument("--host", default="127.0.0.1", help="bind address; anything but localhost exposes the model")
    return p


def run(db: str | None, stores: Sequence[str], saes: Sequence[str], probes: Sequence[str] = (), model: str | None = None,
        oracle: str | None = "default", device: str = "cpu", port: int = 8765, host: str = "127.0.0.1") -> None:
    """Build the app and serve it (blocking); a bad store, SAE or probe raises before anything is bound."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ.get("METALENS_THREADS", "1")))
    from ..results import default_db_path

    loaded = []
    if probes:
        from ..probes import load_probe  # type: ignore[import-not-found]  # the method layer's probes

        loaded = [load_probe(p) for p in probes]
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding {host}: anyone who can reach this machine can run the model and read "
              "the results database; there is no authentication", file=sys.stderr)
    subject_loader, oracle_loader = loaders(model, oracle, device)
    app = create_app(db or default_db_path(), list(stores), list(saes), subject_loader, loaded, oracle_loader)
    app.state.dash.warm()  # SAE indexes build while the first pages load
    print(f"metalens dashboard on http://{host}:{port}/", file=sys.stderr, flush=True)
    serve(app, host, port)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m metalens.dashboard ...`: argparse over `run`; an expected mistake prints one line, exit 2."""
    from ..errors import MetalensError
    from ..store import StoreError

    a = parser().parse_args(argv)
    try:
        run(a.db, a.store, a.sae, a.probe, a.model, None if a.no_oracle else a.oracle, a.device, a.port, a.host)
    except (MetalensError, StoreError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
