"""The README's code runs as written; the package ships only runtime files; the research record's
evaluation sets are rebuilt byte for byte from the AO data."""

import glob
import importlib.util
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ORACLE = ROOT / "src" / "metalens" / "oracle" / "default"
RUNTIME = {"adapter_model.safetensors", "adapter_config.json", "oracle.json", "train_config.json"}


def python_blocks(md: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", md.read_text(), re.S)


def test_default_oracle_ships_only_runtime_files():
    assert {p.name for p in DEFAULT_ORACLE.iterdir() if p.name != "__pycache__"} == RUNTIME
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["metalens"]
    assert sorted(p.removeprefix("oracle/default/") for p in data if p.startswith("oracle/default/")) == sorted(RUNTIME)


def test_package_data_is_exactly_the_non_python_files():
    """Every data file in the package is shipped (a template left out breaks the installed package), and
    the patterns match nothing else (no bytecode, no eval sets)."""
    pkg = ROOT / "src" / "metalens"
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["metalens"]
    matched = {Path(p) for pat in patterns for p in glob.glob(str(pkg / pat), recursive=True) if Path(p).is_file()}
    data = {p for p in pkg.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}
    assert data - matched == set(), "data files the wheel would leave out"
    assert {p for p in matched if "__pycache__" in p.parts or p.suffix == ".pyc"} == set()


def test_oracle_benchmark_reads_eval_files_from_research(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # as when run as a script: it imports common
    spec = importlib.util.spec_from_file_location("bench_oracle", ROOT / "benchmarks" / "oracle.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.RESEARCH_ORACLE == ROOT / "research" / "oracle"
    for name in ("eval_heldout.jsonl", "eval_trained.jsonl"):
        assert (mod.RESEARCH_ORACLE / name).is_file()


def test_research_eval_sets_rebuild_identically():
    data = Path(os.environ.get("METALENS_AO_DATA") or ROOT.parent / "shared" / "data" / "ao")
    if not (data / "classification_datasets").is_dir():
        pytest.skip(f"no Activation Oracles data at {data} (set METALENS_AO_DATA)")
    r = subprocess.run([sys.executable, str(ROOT / "research" / "oracle" / "make_eval_sets.py"), "--data", str(data),
                        "--check"],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("identical") == 5


@pytest.mark.integration
@pytest.mark.parametrize("i", range(2))
def test_readme_python_runs_as_written(i, tmp_path):
    blocks = python_blocks(ROOT / "README.md")
    assert len(blocks) == 2
    script = tmp_path / "block.py"
    script.write_text(blocks[i])
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]


def test_readme_numbers_agree_with_benchmark_results():
    """Each number the README quotes, rebuilt from benchmarks/results/*.json: a rerun that changes one fails here."""
    res = {n: json.loads((ROOT / "benchmarks" / "results" / f"{n}.json").read_text())
           for n in ("capture", "sae", "autointerp", "autointerp_trained", "autointerp_latents", "autointerp_fresh",
                     "oracle")}
    tr, fr = res["autointerp_trained"], res["autointerp_fresh"]
    cap, sae, ai, orc = res["capture"]["ratios"], res["sae"], res["autointerp"], res["oracle"]
    ov = orc["heldout"]["overall"]
    phrases = [
        f"{cap['layer7_vs_hf']:.2f}x bare",
        f"{cap['layer29_vs_hf']:.2f}x at the last layer",
        f"{cap['layer7_vs_nnsight']:.2f}x nnsight at layer 7",
        f"{sae['ratios']['saelens-6.54.12']['speedup']:.1f}x SAELens",
        f"({sae['runs']['metalens']['fvu']:.3f} vs {sae['runs']['saelens-6.54.12']['fvu']:.3f})",
        f"CE loss recovered {sae['lm']['ce_recovered']:.2f} at k={sae['lm']['k']}",
        f"one-pass simulation {ai['speed']['speedup_wall']:.1f}x faster",
        f"{ai['recovery']['features_per_cpu_minute']:.2f} features explained and scored per CPU-minute",
        f"validity AUROC {ai['validity_auroc']:.2f}",
        f"validity AUROC {tr['validity_heldout_auroc']:.2f} on rule families it never saw",
        f"({tr['validity_heldout_all_lines_auroc']:.2f} on both lines of every",
        f"{tr['validity_seen_newtext_auroc']:.2f} on trained families read in new text",
        f"(prompted: {tr['validity_subset']['prompted']:.2f} on the same held-out subset)",
        f"{tr['throughput']['speedup']:.1f}x the prompted pipeline's features per CPU-minute",
        f"recovers {tr['recovery_all_lines']['mean_over_seeds']:.2f} of the true explanation's r",
        f"{tr['recovery']['mean_over_seeds']:.2f} on one line per rule",
        f"{res['autointerp_latents']['validity']['auroc']:.2f} on latents of an SAE of the default model",
        f"validity AUROC {fr['validity_heldout_auroc']:.2f} ({fr['validity_heldout_all_lines_auroc']:.2f} on both lines)",
        f"recovery {fr['recovery_all_lines']['mean_over_seeds']:.2f} on both lines",
        f"held-out AUROC {ov['oracle']['auroc']:.2f} against {ov['untrained']['auroc']:.2f} for untrained injection",
        f"{ov['text']['auroc']:.2f} for the text-only control",
        f"{ov['probe']['auroc']:.2f} for a linear probe",
        f"`ask` takes {orc['ask_latency_s']['all']:.2f} s for a {orc['context_tokens']}-token context",
    ]
    readme = (ROOT / "README.md").read_text()
    missing = [p for p in phrases if p not in readme]
    assert missing == [], f"README disagrees with benchmarks/results: {missing}"


@pytest.mark.integration
@pytest.mark.parametrize("guide", ["core", "oracle", "autointerp", "sae"])
def test_guide_python_runs_as_written(guide, tmp_path):
    """A guide's Python blocks, in order, as one script (later blocks may use earlier names)."""
    script = tmp_path / "guide.py"
    script.write_text("\n".join(python_blocks(ROOT / "docs" / f"{guide}.md")))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, env=env,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
