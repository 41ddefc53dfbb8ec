"""`metalens dashboard`: the web app over the results database, activation stores and SAEs (127.0.0.1)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import ModelOpt, command

app = typer.Typer()


@command(app, "dashboard", record=False)
def dashboard(
    db: Optional[Path] = typer.Option(None, "--db", help="results database (default: $METALENS_RESULTS or the cache's)"),
    store: Optional[list[Path]] = typer.Option(None, "--store", help="activation store directory (repeat)"),
    sae: Optional[list[Path]] = typer.Option(None, "--sae", help="SAE directory (repeat); read on the store holding its site"),
    probe: Optional[list[str]] = typer.Option(None, "--probe", help="probe directory or shipped name (repeat)"),
    model: Optional[str] = ModelOpt,
    oracle: str = typer.Option("default", help="oracle adapter directory or 'default'"),
    no_oracle: bool = typer.Option(False, "--no-oracle", help="do not offer the oracle console"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | auto"),
    port: int = typer.Option(8765, help="TCP port"),
    host: str = typer.Option("127.0.0.1", help="bind address (localhost by default; anything else warns)"),
):
    """Serve the dashboard: feature pages, search, try it, the oracle, a live monitor, steering, runs."""
    from ..dashboard import run

    run(None if db is None else str(db), [str(p) for p in store or []], [str(p) for p in sae or []], probe or [],
        model, None if no_oracle else oracle, device, port, host)
