"""Checks that need more than the spec's own fields (data files and their columns, the backbone's hidden
size and positions, a source adapter, this machine) and run before any Ray work. Every problem is a
'key.path: message' line of one `SpecError`; what passes here does not fail later for a knowable reason.

Torch-free (except the GPU count of this machine, read only when a local Ray is about to start), so
`deptune validate` stays fast.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from deptune.backbones import (
    TINY_BACKBONES,
    ConfigUnreadable,
    declared_family,
    family_of,
    hidden_size,
    hub_id_problem,
    is_local,
    missing_files,
    model_config,
    position_limit,
)
from deptune.methods.config import is_registry_uri
from deptune.methods.record import ADAPTER_FILES, CONFIG_FILE, read_record
from deptune.spec_base import IntRange, SpecError, database_url_problem, redact
from deptune.sweep.config import STORAGE_ENV, TRAINING_METRICS, SweepSpec, storage_url
from deptune.sweep.space import SearchPlan, plan_search
from deptune.tasks.catalog import get_task
from deptune.tasks.config import TaskConfig
from deptune.tasks.contents import content_findings
from deptune.tasks.loading import data_errors
from deptune.tracking.catalog import tracker_class
from deptune.tracking.store import URI_ENV, missing_store, resolve_uri, uri_problem
from deptune.train.spec import RunSpec, SourceSpec


@dataclass(frozen=True)
class Checked:
    """What the checks worked out, so the driver does not work it out again, and what they could not check
    or what the run will do unasked (`warnings`, 'key.path: message' lines, printed by every command)."""

    hidden_size: int | None
    plan: SearchPlan | None  # a sweep spec's search plan (None for a run or source spec, or d unknown offline)
    warnings: tuple[str, ...] = ()
    tracking_uri: str | None = None  # resolved once (`tracking.store.resolve_uri`), here
    study_url: str | None = None  # a sweep spec's study storage, resolved once (`sweep.config.storage_url`), here


def check(
    spec: RunSpec | SourceSpec,
    source: str,
    local_cluster: bool = False,
    online: bool = False,
    local: bool = False,
    tracking_uri: str | None = None,
) -> Checked:
    """Raise a `SpecError` listing every problem; `local_cluster`: the run will start a Ray on this
    machine; `local`: it runs in this process (`--local`); `online`: a run is about to start, so the
    backbone's config may be read from the hub (the run needs d) and torch may settle what the data's
    seeded shuffles decide; `tracking_uri`: where a run spec's models:/ source adapter is registered (a
    sweep spec names its own)."""
    warnings: list[str] = []
    if isinstance(spec, SourceSpec):
        errors = [
            e
            for i, task in enumerate(spec.source_tasks)
            for e in _task_errors(task, f"source_tasks.{i}", online, warnings)
        ]
        errors += _writable("train.output_dir", spec.train.output_dir) + _runs_here(spec, local_cluster, local)
        if errors:
            raise SpecError(source, errors)
        return Checked(None, None, tuple(warnings))
    try:
        config = model_config(spec.backbone, online=online)
        errors = _backbone(spec, config, online, warnings)
    except ConfigUnreadable as exc:
        config, errors = None, [f"backbone.name: {exc}"]
    d = hidden_size(spec.backbone, config) if config is not None else None
    if isinstance(spec, SweepSpec):  # the sweep's tracker resolves its URI; a run's models:/ source is MLflow's
        uri, url = tracker_class(spec.tracking.tracker).resolve_uri(spec.tracking.uri), storage_url(spec)
    else:
        uri, url = resolve_uri(tracking_uri), None
    errors += _task_errors(spec.task, "task", online, warnings) + _source_adapter(spec, uri)
    plan = None
    if d is not None and isinstance(spec, SweepSpec):
        plan, search_errors = plan_search(spec, d)
        errors += search_errors
    if d is not None and not errors:
        errors += _method_fits(spec, d)
    errors += _positions(spec, config) + _causal_rule(spec, config)
    if isinstance(spec, SweepSpec):
        errors += _objectives(spec) + _stores(spec, uri, url)
        if plan is not None:
            errors += enqueue_errors(spec, plan) + _searched_source_fit(spec, plan)
    errors += _writable("train.output_dir", spec.train.output_dir)
    if spec.train.storage_path and "://" not in spec.train.storage_path:
        errors += _writable("train.storage_path", Path(spec.train.storage_path))
    errors += _runs_here(spec, local_cluster, local)
    if errors:
        raise SpecError(source, errors)
    return Checked(d, plan, tuple(warnings), uri, url)


def _runs_here(spec: RunSpec | SourceSpec, local_cluster: bool, local: bool) -> list[str]:
    """What this machine lacks for a run that starts a Ray on it (`local_cluster`) or runs in this process."""
    if not (local_cluster or local):
        return []
    from deptune.cluster.fit import exceeds_this_machine, local_gpus

    errors = []
    if local_cluster:
        errors += exceeds_this_machine(spec, spec.sweep.driver_cpus if isinstance(spec, SweepSpec) else 0.0)
    if spec.train.device == "cuda" and local_gpus() == 0:
        errors.append(
            "train.device: cuda, but this machine has no CUDA GPU; use auto or cpu, or pass "
            "--address to run on a cluster that has one"
        )
    return errors


PSEUDO_FILESYSTEMS = {
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "cgroup",
    "cgroup2",
    "debugfs",
    "securityfs",
    "tracefs",
    "configfs",
    "efivarfs",
    "bpf",
    "pstore",
    "mqueue",
    "fusectl",
    "hugetlbfs",
}


def _writable(key: str, path: Path) -> list[str]:
    """A folder the run will create must be creatable: its nearest existing ancestor is a writable folder
    on a real file system (not a regular file, not /proc or /sys). Nothing is created here."""
    path = Path(path).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return [f"{key}: {path} cannot be created: {existing} is a file, not a folder"]
    if (fs := _filesystem(existing)) in PSEUDO_FILESYSTEMS:
        return [f"{key}: {path} is on the {fs} pseudo file system ({_mount_point(existing)}); choose a real folder"]
    if existing != path and not os.access(existing, os.W_OK | os.X_OK):
        return [f"{key}: {path} cannot be created: {existing} is not writable"]
    if existing == path and not os.access(path, os.W_OK | os.X_OK):
        return [f"{key}: {path} is not writable"]
    return []


def _mounts() -> list[tuple[Path, str]]:
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:  # not Linux: no pseudo file systems to refuse
        return []
    return [(Path(f[1].replace("\\040", " ")), f[2]) for f in (line.split() for line in lines) if len(f) > 2]


def _mount_point(path: Path) -> Path:
    resolved = path.resolve()
    return max(
        (m for m, _ in _mounts() if resolved == m or m in resolved.parents),
        key=lambda m: len(m.parts),
        default=Path("/"),
    )


def _filesystem(path: Path) -> str | None:
    point = _mount_point(path)
    return next((fs for m, fs in reversed(_mounts()) if m == point), None)


def enqueue_errors(spec: SweepSpec, plan: SearchPlan) -> list[str]:
    """Each `sweep.enqueue` point is a configuration the search could sample: its keys are searched
    dimensions, its values lie in their ranges (on the step grid), and what it derives (DePT's rank under
    the budget) exists."""
    errors = []
    for i, point in enumerate(spec.sweep.enqueue):
        key = f"sweep.enqueue.{i}"
        point_errors = [
            f"{key}.{name}: {problem}"
            for name, value in point.items()
            if (problem := _point_value_error(plan, name, value))
        ]
        if not point_errors:
            values = {k: v for k, v in plan.dimensions.items() if isinstance(v, int)} | dict(point)
            values.setdefault("prompt_length", getattr(plan.prompt_length, "low", plan.prompt_length))
            try:
                plan.method.derived(values, plan.hidden_size)
            except ValueError as exc:
                point_errors.append(f"{key}: {exc}")
        errors += point_errors
    return errors


def _point_value_error(plan: SearchPlan, name: str, value: object) -> str | None:
    dim = plan.dimensions.get(name)
    if dim is None:
        return f"not searched by this spec (searched: {', '.join(plan.searched) or 'nothing'})"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"{value!r} is not a finite number"
    if isinstance(dim, int):
        return None if value == dim else f"{value} but the spec fixes {name} at {dim}"
    if isinstance(dim, IntRange):
        if value != int(value):
            return f"{value} is not an integer"
        if not dim.low <= value <= dim.high or (int(value) - dim.low) % dim.step:
            return f"{value} is outside the searched range {dim.low}-{dim.high}" + (
                f" (step {dim.step})" if dim.step != 1 else ""
            )
        return None
    if not dim.low <= value <= dim.high:
        return f"{value:g} is outside the searched range {dim.low:g}-{dim.high:g}"
    return None


def _task_errors(task: TaskConfig, key: str, online: bool, warnings: list[str]) -> list[str]:
    """The data exists, has the task's columns, and holds a validation split; then every row of it, read
    whole as the run will read it (`tasks.contents`)."""
    errors = [f"{key}.{line}" for line in data_errors(task)]
    if errors:
        return errors
    found = content_findings(task, shuffles=online)
    warnings += [f"{key}.{line}" for line in found.warnings]
    return [f"{key}.{line}" for line in found.errors]


def check_fetched_source(spec: RunSpec, source: str) -> None:
    """After the driver fetched a models:/ source adapter (`tracking.sources.localize_sources`): it fits."""
    if errors := _source_adapter(spec):
        raise SpecError(source, errors)


def _source_adapter(spec: RunSpec, tracking_uri: str | None = None) -> list[str]:
    """A local source adapter must hold both files and fit the method; a models:/ URI is fetched by the
    driver once every other check passed (here, which imports no MLflow, its registry's store must exist:
    `tracking_uri`, resolved)."""
    init_from, method = spec.method.init_from, spec.method
    if init_from is None:
        return []
    if is_registry_uri(init_from):
        uri = tracking_uri or resolve_uri(None)
        problem = uri_problem(uri) or missing_store(uri)
        return (
            [f"method.init_from: {init_from} is looked up in the Model Registry at {redact(uri)}, but {problem}"]
            if problem
            else []
        )
    missing = [f for f in ADAPTER_FILES if not (Path(init_from) / f).is_file()]
    if missing:
        return [f"method.init_from: no adapter in {init_from}: {' and '.join(missing)} missing"]
    try:
        record = read_record(init_from)
    except ValueError as exc:
        return [f"method.init_from: unreadable {Path(init_from) / CONFIG_FILE}: {exc}"]
    return method.source_errors(record)


def _searched_source_fit(spec: SweepSpec, plan: SearchPlan) -> list[str]:
    """A source adapter fixes the shape it was trained with: a sweep that starts every trial from it may
    not search its prompt length or rank (DePT with a budget searches m unless told otherwise)."""
    init_from = spec.method.init_from
    if init_from is None or is_registry_uri(init_from) or not (Path(init_from) / CONFIG_FILE).is_file():
        return []
    try:
        record = read_record(init_from)
    except ValueError:
        return []  # said by _source_adapter
    errors = []
    for name in ("prompt_length", "rank"):
        dim, fixed = plan.dimensions.get(name), getattr(record, name, None)
        if isinstance(dim, IntRange) and fixed is not None and (dim.low, dim.high) != (fixed, fixed):
            errors.append(
                f"search.{name}: {dim.low}-{dim.high} is searched, but every trial starts from "
                f"method.init_from {init_from}, whose {name} is {fixed}: set search.{name}: "
                f"{{low: {fixed}, high: {fixed}}}"
            )
    return errors


def _backbone(spec: RunSpec, config: dict | None, online: bool, warnings: list[str]) -> list[str]:
    """A local folder holds what `from_pretrained` loads, a hub name is a hub id, the config is known (or,
    for `validate`, a warning says what went unchecked), and `backbone.family` agrees with it."""
    name, family = spec.backbone.name, spec.backbone.family
    if name not in TINY_BACKBONES:
        if is_local(name):
            if config is None:
                return [f"backbone.name: {name} is a path but holds no config.json"]
            if missing := missing_files(Path(name)):
                return [f"backbone.name: {name} holds no {' and no '.join(missing)}: from_pretrained loads them"]
        elif problem := hub_id_problem(name):
            return [f"backbone.name: {name!r} is neither a local folder nor a hub id ({problem})"]
        if config is None and online:
            offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") else ""
            return [
                f"backbone.name: cannot read the config of {name!r}{offline}: not cached, and offline or not a "
                f"model on the hub"
            ]
        if config is None:
            warnings.append(
                f"backbone.name: the config of {name!r} is not in the Hugging Face cache, and validate "
                f"does not download: not checked: the budget and search plan (d), prompt + input "
                f"positions, backbone.family; `deptune sweep` and `train` read it from the hub and check "
                f"them"
            )
    declared = declared_family(config) if config else None
    if family is not None and declared is not None and declared != family:
        article = "an" if declared == "encoder" else "a"
        return [
            f"backbone.family: {name} is {article} {declared} model (its config says so), not {family}; leave "
            f"backbone.family out"
        ]
    return []


def _stores(spec: SweepSpec, uri: str, url: str) -> list[str]:
    """The form of the study storage and the tracking URI, resolved (whether they answer is the sweep's to
    check)."""
    errors = []
    origin = "" if spec.study.storage or not os.environ.get(STORAGE_ENV) else f" (from ${STORAGE_ENV})"
    if problem := database_url_problem(url):
        errors.append(f"study.storage: {redact(spec.study.storage or url)}{origin}: {problem}")
    elif url.startswith("sqlite:///"):
        errors += _writable("study.storage", Path(url.removeprefix("sqlite:///")).parent)
    origin = "" if spec.tracking.uri or not os.environ.get(URI_ENV) else f" (from ${URI_ENV})"
    if problem := tracker_class(spec.tracking.tracker).uri_problem(uri):
        errors.append(f"tracking.uri: {redact(spec.tracking.uri or os.environ.get(URI_ENV) or uri)}{origin}: {problem}")
    elif uri.startswith("sqlite:///"):
        errors += _writable("tracking.uri", Path(uri.removeprefix("sqlite:///")).parent)
    return errors


def _method_fits(spec: RunSpec, d: int) -> list[str]:
    """The run `deptune train` makes of the spec builds (DePT: its budget and rank agree at this d)."""
    resolve = getattr(spec.method, "resolve", None)
    if resolve is None or getattr(spec.method, "budget", None) is None:
        return []
    try:
        resolve(d)
    except ValueError as exc:
        key = (
            "method.rank"
            if spec.method.rank is not None and spec.method.prompt_length < spec.method.budget
            else "method.prompt_length"
        )
        return [f"{key}: {exc}"]
    return []


def _positions(spec: RunSpec, config: dict | None) -> list[str]:
    """Prompt + input (+ the answer, for causal models) must fit the backbone's position embeddings;
    the longest prompt a sweep may sample is the one checked."""
    limit = position_limit(spec.backbone, config) if config is not None else None  # unknown: said by _backbone
    if limit is None:
        return []
    prompt = spec.method.prompt_length
    searched = spec.search.ranges().get("prompt_length") if isinstance(spec, SweepSpec) else None
    if searched is not None:
        prompt = max(prompt, searched.high)
    answer = spec.train.max_target_length if _family(spec, config) == "causal" else 0
    total = prompt + spec.method.max_length + answer
    if total <= limit:
        return []
    alone_too_long = spec.method.max_length + answer + 1 > limit  # even a 1-token prompt would not fit
    key = (
        "search.prompt_length.high"
        if prompt != spec.method.prompt_length and not alone_too_long
        else "method.max_length"
    )
    return [
        f"{key}: prompt ({prompt}) + method.max_length ({spec.method.max_length})"
        + (f" + train.max_target_length ({answer})" if answer else "")
        + f" = {total} positions, but {spec.backbone.name} has {limit}; shorten the prompt or max_length"
    ]


def _causal_rule(spec: RunSpec, config: dict | None) -> list[str]:
    """`causal_rule: official` lays out decoder-only inputs; on another family it would change nothing."""
    family = _family(spec, config)
    if spec.method.causal_rule != "official" or family in (None, "causal"):
        return []
    return [
        f"method.causal_rule: official is the official code's decoder-only layout, but {spec.backbone.name} is "
        f"a {family} backbone; leave causal_rule out"
    ]


def _family(spec: RunSpec, config: dict | None) -> str | None:
    if spec.backbone.family is not None:
        return spec.backbone.family
    return family_of(config) if config else None


def _objectives(spec: SweepSpec) -> list[str]:
    known = (*TRAINING_METRICS, *(f"eval_{m}" for m in get_task(spec.task.name).metric_names))
    return [
        f"sweep.{key}.metric: {objective.metric!r} is not reported; choose one of {', '.join(known)}"
        for key, objective in (("objective", spec.sweep.objective), ("second_objective", spec.sweep.second_objective))
        if objective is not None and objective.metric not in known
    ]
