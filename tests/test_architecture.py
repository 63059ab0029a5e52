"""The one-way house: imports run down the layers of ARCHITECTURE.md (import-linter's contract in
pyproject.toml), no two modules import each other, and `deptune validate` stays light."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted(str(p) for p in (ROOT / "search_spaces").rglob("*.yaml"))


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "platform")}


def test_imports_run_down_the_layers():
    code = (
        "import sys\nfrom importlinter.cli import lint_imports\n"
        f"sys.exit(lint_imports(config_filename={str(ROOT / 'pyproject.toml')!r}, no_cache=True, no_logo=True))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "1 kept, 0 broken" in result.stdout, result.stdout + result.stderr


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), lazy imports included."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in graph.find_modules_directly_imported_by(module):
            if other not in graph.modules or not other.startswith("deptune"):
                continue
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_two_modules_import_each_other():
    sys.path.insert(0, str(ROOT / "platform"))
    try:
        graph = grimp.build_graph("deptune", cache_dir=None)
    finally:
        sys.path.remove(str(ROOT / "platform"))
    assert len(graph.modules) > 40
    assert _cycles(graph) == []


MLFLOW_SIDE = ("mlflow", "deptune.tracking.store", "deptune.tracking.journal", "deptune.tracking.mlflow_execution")
"""MLflow and what speaks its language (tag names, views, journal sending): `tracking/`'s, not the sweep's."""


def test_the_sweep_layer_talks_to_a_tracker_not_to_mlflow():
    sys.path.insert(0, str(ROOT / "platform"))
    try:
        graph = grimp.build_graph("deptune", cache_dir=None, include_external_packages=True)
    finally:
        sys.path.remove(str(ROOT / "platform"))
    sweep = sorted(m for m in graph.modules if m.startswith("deptune.sweep."))
    assert len(sweep) >= 10
    direct = {
        (module, imported)
        for module in sweep
        for imported in graph.find_modules_directly_imported_by(module)
        if imported.startswith(MLFLOW_SIDE)
    }
    assert direct == set()
    names = ("RENAMED", "SUMMARY_STEP", "STATE_TAG", "NOTE_TAG", "TAG", "mlflow.")
    for path in (ROOT / "platform/deptune/sweep").glob("*.py"):
        text = path.read_text()
        assert not [n for n in names if f"import {n}" in text or f" {n}," in text or f'"{n}' in text], path


def test_validate_reads_every_shipped_spec_without_torch_ray_or_mlflow():
    code = (
        "import json, sys, time\n"
        "started = time.perf_counter()\n"
        "from typer.testing import CliRunner\n"
        "from deptune.cli import app\n"
        f"result = CliRunner().invoke(app, ['validate', *{SPECS!r}])\n"
        "print(json.dumps({'exit': result.exit_code, 'output': result.output, 'seconds': time.perf_counter() - started,"
        " 'heavy': [m for m in ('torch', 'ray', 'mlflow', 'transformers', 'datasets') if m in sys.modules]}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["exit"] == 0, report["output"]
    assert report["output"].count(": ok") == len(SPECS) >= 20
    assert report["heavy"] == []
    print(f"validate of {len(SPECS)} specs: {report['seconds']:.2f} s")  # the figure the README quotes


def test_architecture_document_names_every_layer():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    contract = (ROOT / "pyproject.toml").read_text().split("[tool.importlinter]", 1)[1]
    layers = [
        part.strip()
        for line in contract.splitlines()
        if line.strip().startswith('"deptune')
        for part in line.strip().strip('",').split("|")
    ]
    assert len(layers) == 15, layers
    for module in layers:
        path = module.removeprefix("deptune.").replace(".", "/")
        assert f"`{path}" in text, f"ARCHITECTURE.md does not describe {module}"
