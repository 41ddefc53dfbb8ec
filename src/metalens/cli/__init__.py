"""The `metalens` command line: one module per area, registered here on the root app.

    common.py      shared options, output, error handling, run recording
    core.py        info, capture, generate, demo, serve
    autointerp.py  explain
    oracle.py      ask, oracle train|eval|personaqa
    probe.py       probe train|eval
    monitor.py     monitor (live readings during generation)
    sae.py         sae train|eval|pages
    dashboard.py   dashboard
    steer.py       steer, diff
    agent.py       agent (an LLM investigates one feature with the tools)
"""

from __future__ import annotations

import typer

from . import agent, autointerp, core, dashboard, monitor, oracle, probe, sae, steer
from .common import DEBUG

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="Read what a language model is thinking.")


@app.callback()
def root(debug: bool = typer.Option(False, "--debug", help="show the full traceback of an error")):
    """Read what a language model is thinking."""
    if debug:
        DEBUG["on"] = True


for sub in (core.app, oracle.app, autointerp.app, steer.app, monitor.app, dashboard.app, agent.app):
    app.registered_commands += sub.registered_commands
app.add_typer(oracle.oracle_app, name="oracle")
app.add_typer(sae.sae_app, name="sae")
app.add_typer(probe.probe_app, name="probe")


def main() -> None:
    app()
