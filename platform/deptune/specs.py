"""Reading a spec file: one YAML file, strictly typed, whichever kind it is.

A run spec (backbone, task, method, train, resources) describes one training run; a sweep spec adds
`search`, `sweep`, `study` and `tracking` (`deptune.sweep.config.SweepSpec`); a source spec
(`source_tasks` instead of `task`) is MPT's multitask source stage. `load_spec` returns whichever the
file is; every problem becomes a 'key.path: message' line of one `SpecError`.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from deptune.methods.config import LR_PREFIX
from deptune.spec_base import SpecError, StrictModel
from deptune.sweep.config import SWEEP_SECTIONS, SweepSpec, base_run_data
from deptune.train.spec import RunSpec, SourceSpec

_KEYED_MESSAGE = re.compile(r"^(?:Value error, )?([a-z_]+(?:\.[a-z_0-9]+)+): (.*)$", re.S)


def _error_line(error: dict[str, Any]) -> str:
    """'key.path: message'; a cross-field check names its own key path at the start of its message."""
    parts = _lr_keys([str(p) for p in error["loc"]])
    message = error["msg"].removeprefix("Value error, ")
    keyed = _KEYED_MESSAGE.match(message)
    if keyed and (not parts or keyed.group(1).startswith(parts[0])):
        return f"{keyed.group(1)}: {keyed.group(2)}"
    return f"{'.'.join(parts) or '<root>'}: {message}"


def _lr_keys(parts: list[str]) -> list[str]:
    """A train section's rates are the mapping `lr` inside, `lr_<group>` as the user wrote them."""
    for i in range(len(parts) - 1):
        if parts[i] == "lr":
            return [*parts[:i], LR_PREFIX + parts[i + 1], *parts[i + 2 :]]
    return parts


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


def apply_overrides(data: Any, overrides: list[str]) -> Any:
    """`key.path=value` overrides (value parsed as YAML, no tags beyond the safe ones), e.g. train.steps=50;
    every problem is a `SpecError` naming the key path."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or "" in key.split("."):
            raise SpecError("--set", [f"--set: {item!r}: expected key.path=value"])
        if not isinstance(data, dict):
            raise SpecError("--set", [f"<root>: the spec is not a mapping of sections; --set {key} cannot apply"])
        node, *parents, leaf = data, *key.split(".")
        for depth, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                where = ".".join(parents[: depth + 1])
                raise SpecError("--set", [f"{key}: {where} is {type(node).__name__} {node!r}, not a section"])
        try:
            node[leaf] = _load_yaml(raw)
        except yaml.YAMLError as exc:
            raise SpecError("--set", [f"{key}: the value is not plain YAML ({_yaml_problem(exc)})"]) from None
    return data


class _SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no python tags), but a key given twice is an error: the safe loader keeps
    the last silently, dropping the keys of an earlier section."""


MAX_DEPTH = 64
"""Levels of nesting a spec may have (a real one has four or five); deeper YAML is refused before PyYAML
composes it, which recurses once per level (and scans in time quadratic in the depth)."""
MAX_NODES = 100_000
"""Values a spec may hold once its aliases are expanded (a real one has a few hundred): an alias bomb (an
alias to a list of aliases to lists ...) is refused before anything walks or builds its expansion."""


def _too_deep(text: str) -> str | None:
    """'nested more than MAX_DEPTH levels ... at line L', read from the parser's events (nothing composed),
    stopping at the first level too many."""
    loader = _SpecLoader(text)
    depth = 0
    try:
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    mark = event.start_mark
                    return (
                        f"nested more than {MAX_DEPTH} levels deep (at line {mark.line + 1}, column "
                        f"{mark.column + 1}); a spec's sections nest a few levels"
                    )
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
    finally:
        loader.dispose()
    return None


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _expansion_problem(root: yaml.Node) -> str | None:
    """Why the document's aliases expand too far: more than MAX_NODES values, more than MAX_DEPTH levels, or
    a node inside itself. Each node is sized once (memoised, without recursion), so a bomb costs what its
    text costs."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_sized = stack.pop()
        key = id(node)
        if children_sized:
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            open_nodes.discard(key)
            if size[key] > MAX_NODES:
                return (
                    f"its aliases expand to more than {MAX_NODES:,} values (an alias bomb?); a spec holds a few hundred"
                )
            if depth[key] > MAX_DEPTH:
                return f"its aliases nest more than {MAX_DEPTH} levels deep; a spec's sections nest a few levels"
        elif key not in size:
            if key in open_nodes:
                return f"an alias holds the node it names (line {node.start_mark.line + 1}); a spec is a tree"
            open_nodes.add(key)
            stack.append((node, True))
            stack.extend((k, False) for k in _children(node) if id(k) not in size)
    return None


def _duplicates(node: yaml.Node, path: str = "", visited: set[int] | None = None) -> list[str]:
    """'key.path: given twice (lines a and b)' for every mapping key repeated in the YAML tree; a node that
    aliases bring back is checked once, where it first appears."""
    visited = set() if visited is None else visited
    if id(node) in visited:
        return []
    visited.add(id(node))
    errors: list[str] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            dotted = f"{path}.{key}" if path else str(key)
            if key is not None and key != "<<":
                if key in seen:
                    errors.append(f"{dotted}: given twice (lines {seen[key]} and {key_node.start_mark.line + 1})")
                seen.setdefault(key, key_node.start_mark.line + 1)
            errors += _duplicates(value_node, dotted, visited)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            errors += _duplicates(item, f"{path}.{i}" if path else str(i), visited)
    return errors


def _load_yaml(text: str) -> Any:
    """The YAML's data; refused before it is built: nesting deeper than MAX_DEPTH, aliases expanding past
    MAX_NODES values, a key given twice."""
    if problem := _too_deep(text):
        raise yaml.YAMLError(problem)
    loader = _SpecLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if problem := _expansion_problem(node):
            raise yaml.YAMLError(problem)
        if errors := _duplicates(node):
            raise _DuplicateKeys(errors)
        return loader.construct_document(node)
    finally:
        loader.dispose()


class _DuplicateKeys(yaml.YAMLError):
    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line: what PyYAML found and where."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def read_spec_data(path: str | Path) -> Any:
    """The YAML data of a spec file; an unreadable file, non-UTF-8 bytes, bad YAML or a repeated key is a
    `SpecError` naming the file or the key."""
    path = Path(path)
    if path.is_dir():
        raise SpecError(str(path), ["<file>: is a directory, not a spec file"])
    if not path.exists():
        raise SpecError(str(path), ["<file>: no such file"])
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError(str(path), [f"<file>: cannot be read ({exc.strerror or type(exc).__name__})"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(
            str(path),
            [f"<file>: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); save the spec as UTF-8"],
        ) from None
    try:
        return _load_yaml(text)
    except _DuplicateKeys as exc:
        raise SpecError(str(path), exc.errors) from None
    except yaml.YAMLError as exc:
        raise SpecError(str(path), [f"<yaml>: {_yaml_problem(exc)}"]) from None


def load_spec(
    path: str | Path, overrides: list[str] | None = None, kind: type[StrictModel] | None = None, data: Any = None
) -> Any:
    """The spec in `path` (or its already read `data`); `kind=RunSpec` on a sweep spec gives its base run
    (run checks only)."""
    path = Path(path)
    data = copy.deepcopy(data) if data is not None else read_spec_data(path)
    data = {} if data is None else data
    if overrides:
        data = apply_overrides(data, overrides)
    if isinstance(data, dict) and any(k in data for k in SWEEP_SECTIONS) and isinstance(data.get("study", {}), dict):
        data["study"] = {"name": path.stem, **data.get("study", {})}  # a sweep's study is named after its file
    return parse_spec(data, str(path), kind)


def load_run_spec(path: str | Path, overrides: list[str] | None = None) -> tuple[RunSpec | SourceSpec, str | None]:
    """What `deptune train` runs: a run spec as it is, a sweep spec's base run (with run checks only: the
    sweep's own settings do not apply); and the tracking URI a sweep spec names (for models:/ sources)."""
    data = read_spec_data(path)
    spec = load_spec(path, overrides, kind=RunSpec, data=data)
    tracking = data.get("tracking") if isinstance(data, dict) else None
    uri = tracking.get("uri") if isinstance(tracking, dict) else None
    return spec, uri if isinstance(uri, str) else None
