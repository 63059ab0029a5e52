"""A run spec: one YAML file, strictly typed. Each section's model lives with its layer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from deptune.methods import MethodConfig
from deptune.models import BackboneConfig
from deptune.spec_base import StrictModel
from deptune.tasks.config import TaskConfig
from deptune.train.config import ResourcesConfig, TrainConfig


class RunSpec(StrictModel):
    """One training run: backbone + task + method + train settings."""

    backbone: BackboneConfig
    task: TaskConfig
    method: MethodConfig
    train: TrainConfig = TrainConfig()
    resources: ResourcesConfig = ResourcesConfig()


class SpecError(ValueError):
    """A spec file that does not validate; `errors` holds one 'key.path: message' line per problem."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source, self.errors = source, errors
        super().__init__(f"{source}: {len(errors)} error(s)\n" + "\n".join(f"  {e}" for e in errors))


def _key_path(loc: tuple[Any, ...]) -> str:
    # drop pydantic's discriminator tag segment (method.dept.rank -> method.rank)
    parts = [str(p) for i, p in enumerate(loc) if not (i == 1 and loc[0] == "method" and isinstance(p, str)
                                                       and len(loc) > 2)]
    return ".".join(parts) or "<root>"


def parse_spec(data: Any, source: str = "<spec>") -> RunSpec:
    if not isinstance(data, dict):
        raise SpecError(source, [f"<root>: expected a mapping of sections, got {type(data).__name__}"])
    try:
        return RunSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(source, [f"{_key_path(e['loc'])}: {e['msg']}" for e in exc.errors()]) from None


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


def load_spec(path: str | Path, overrides: list[str] | None = None) -> RunSpec:
    path = Path(path)
    if not path.is_file():
        raise SpecError(str(path), ["<file>: no such file"])
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SpecError(str(path), [f"<yaml>: {exc}"]) from None
    if overrides:
        data = apply_overrides(data, overrides)
    return parse_spec(data, str(path))
