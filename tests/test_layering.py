"""The shape of the package: imports point down the layers only.

    core  <-  methods  <-  views  <-  agent, demo  <-  cli

A method never imports another method; nothing imports the CLI; no private name (`_x`) is imported
from another module. Every module must have a layer here, so a new one is placed on purpose.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "metalens"

CORE = {"__init__", "models", "sites", "capture", "intervene", "store", "results", "features", "errors", "io", "sparse",
        "metrics", "adapters", "testing"}
METHODS = {"sae", "diff", "steer", "autointerp", "oracle", "probes", "monitor", "deception"}
VIEWS = {"viz", "dashboard"}
TOP = {"agent", "demo"}
CLI = {"cli", "__main__"}
LAYER = {**{u: 0 for u in CORE}, **{u: 1 for u in METHODS}, **{u: 2 for u in VIEWS}, **{u: 3 for u in TOP},
         **{u: 4 for u in CLI}}
NAMES = ["core", "method", "view", "agent/demo", "cli"]


def unit_of(module: str) -> str:
    """'metalens.sae.train' -> 'sae'; 'metalens' -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path, root: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every metalens import in one file."""
    rel = path.relative_to(root.parent).with_suffix("")
    here = list(rel.parts)
    package = here[:-1]  # the package a relative import starts from (an __init__ is inside its package)
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == root.name]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != root.name:
                continue
            names = [a.name for a in node.names]
            if not node.module:  # from . import x, y: a name is a module, or an attribute of the package
                pkg_dir = root.parent.joinpath(*mod.split("."))
                for n in names:
                    is_module = (pkg_dir / f"{n}.py").exists() or (pkg_dir / n).is_dir()
                    out.append((f"{mod}.{n}", [], node.lineno) if is_module else (mod, [n], node.lineno))
            else:
                out.append((mod, names, node.lineno))
    return out


def violations(root: Path) -> list[str]:
    """Every broken layering rule under a package directory, as 'file:line: why'."""
    bad = []
    for path in sorted(root.rglob("*.py")):
        me_mod = ".".join(path.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__")
        me = unit_of(me_mod)
        where = f"{path.relative_to(root.parent)}"
        if me not in LAYER:
            bad.append(f"{where}: module {me!r} has no layer in tests/test_layering.py (place it on purpose)")
            continue
        for mod, names, line in imports(path, root):
            other = unit_of(mod)
            if other not in LAYER:
                bad.append(f"{where}:{line}: imports {mod}, which has no layer")
                continue
            if other in CLI and me not in CLI:
                bad.append(f"{where}:{line}: imports the CLI ({mod}); nothing imports the CLI")
            elif LAYER[other] > LAYER[me]:
                bad.append(f"{where}:{line}: {NAMES[LAYER[me]]} {me!r} imports {NAMES[LAYER[other]]} {other!r} ({mod})")
            elif LAYER[me] == LAYER[other] == 1 and me != other:
                bad.append(f"{where}:{line}: method {me!r} imports method {other!r} ({mod}); meet through core types")
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and mod != me_mod:
                bad.append(f"{where}:{line}: imports private name(s) {private} from {mod}")
    return bad


def test_package_layers_point_down():
    assert violations(SRC) == []


@pytest.mark.parametrize("target, line", [
    ("sae/model.py", "from ..oracle.ask import Oracle\n"),
    ("models.py", "from .sae import Sae\n"),
    ("viz/sae.py", "from ..cli.common import emit\n"),
    ("steer.py", "from .sites import _private_helper\n"),
    ("oracle/tasks.py", "import metalens.diff\n"),
    ("newthing.py", "x = 1\n"),
], ids=["method->method", "core->method", "view->cli", "private", "absolute method->method", "unplaced module"])
def test_planted_violation_is_caught(tmp_path, target, line):
    root = tmp_path / "metalens"
    shutil.copytree(SRC, root, ignore=shutil.ignore_patterns("__pycache__", "default", "*.safetensors"))
    f = root / target
    f.write_text((f.read_text() if f.exists() else "") + line)
    found = violations(root)
    assert len(found) == 1 and found[0].startswith(f"metalens/{target}"), found
