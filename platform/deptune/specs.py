"""Reading a spec file: one YAML file, strictly typed, whichever kind it is.

A run spec (backbone, task, method, train, resources) describes one training run; a sweep spec adds
`search`, `sweep`, `study` and `tracking` (`deptune.sweep.config.SweepSpec`); a source spec
(`source_tasks` instead of `task`) is MPT's multitask source stage. `load_spec` returns whichever the
file is; every problem becomes a 'key.path: message' line of one `SpecError`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from deptune.spec_base import SpecError, StrictModel
from deptune.sweep.config import SWEEP_SECTIONS, SweepSpec, base_run_data
from deptune.train.spec import RunSpec, SourceSpec

_KEYED_MESSAGE = re.compile(r"^(?:Value error, )?([a-z_]+(?:\.[a-z_0-9]+)+): (.*)$", re.S)


def _error_line(error: dict[str, Any]) -> str:
    """'key.path: message'; a cross-field check names its own key path at the start of its message."""
    parts = [str(p) for p in error["loc"]]
    message = error["msg"].removeprefix("Value error, ")
    keyed = _KEYED_MESSAGE.match(message)
    if keyed and (not parts or keyed.group(1).startswith(parts[0])):
        return f"{keyed.group(1)}: {keyed.group(2)}"
    return f"{'.'.join(parts) or '<root>'}: {message}"


def spec_kind(data: dict[str, Any]) -> type[StrictModel]:
    """A sweep spec when it has a sweep section, a source spec when it has source_tasks, else a run spec."""
    if any(k in data for k in SWEEP_SECTIONS):
        return SweepSpec
    return SourceSpec if "source_tasks" in data else RunSpec


def parse_spec(data: Any, source: str = "<spec>", kind: type[StrictModel] | None = None) -> Any:
    """Validate a spec's data as `kind` (default: the kind its sections say)."""
    if not isinstance(data, dict):
        raise SpecError(source, [f"<root>: expected a mapping of sections, got {type(data).__name__}"])
    if kind is RunSpec and any(k in data for k in SWEEP_SECTIONS):  # a sweep spec's base run
        data = {k: v for k, v in base_run_data(data).items() if k not in SWEEP_SECTIONS}
    try:
        return (kind or spec_kind(data)).model_validate(data)
    except ValidationError as exc:
        raise SpecError(source, [_error_line(e) for e in exc.errors()]) from None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`key.path=value` overrides (value parsed as YAML), e.g. train.steps=50."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SpecError("--set", [f"{item!r}: expected key.path=value"])
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return data


def load_spec(path: str | Path, overrides: list[str] | None = None, kind: type[StrictModel] | None = None) -> Any:
    """The spec in `path`; `kind=RunSpec` on a sweep spec gives its base run (run checks only)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(str(path), ["<file>: no such file"])
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SpecError(str(path), [f"<yaml>: {exc}"]) from None
    if overrides:
        data = apply_overrides(data, overrides)
    if isinstance(data, dict) and any(k in data for k in SWEEP_SECTIONS) and isinstance(data.get("study", {}), dict):
        data["study"] = {"name": path.stem, **data.get("study", {})}  # a sweep's study is named after its file
    return parse_spec(data, str(path), kind)


def load_run_spec(path: str | Path, overrides: list[str] | None = None) -> tuple[RunSpec | SourceSpec, str | None]:
    """What `deptune train` runs: a run spec as it is, a sweep spec's base run (with run checks only: the
    sweep's own settings do not apply); and the tracking URI a sweep spec names (for models:/ sources)."""
    path = Path(path)
    spec = load_spec(path, overrides, kind=RunSpec)
    data = yaml.safe_load(path.read_text()) if path.is_file() else None
    tracking = data.get("tracking") if isinstance(data, dict) else None
    return spec, tracking.get("uri") if isinstance(tracking, dict) else None
