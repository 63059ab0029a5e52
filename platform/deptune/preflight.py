"""Checks that need more than the spec's own fields (the filesystem, the backbone's hidden size, this
machine) and run before any Ray work: each problem is a 'key.path: message' line of a `SpecError`."""

from __future__ import annotations

import os
from pathlib import Path

from deptune.config import RunSpec, SourceSpec, SpecError
from deptune.methods.io import CONFIG_FILE, WEIGHTS_FILE, is_registry_uri, read_record
from deptune.tasks import get_task
from deptune.tasks.config import TaskConfig


def check(spec: RunSpec | SourceSpec, source: str, local_cluster: bool = False) -> None:
    """Raise a `SpecError` listing every problem; `local_cluster`: the run will start a Ray on this machine."""
    if isinstance(spec, SourceSpec):
        errors = [e for i, task in enumerate(spec.source_tasks) for e in _missing_data(task, f"source_tasks.{i}")]
        if errors:
            raise SpecError(source, errors)
        return
    errors = _missing_files(spec) + _budget_and_search(spec)
    if local_cluster:
        errors += _exceeds_this_machine(spec)
    if errors:
        raise SpecError(source, errors)


def _missing_data(task: TaskConfig, key: str) -> list[str]:
    errors = []
    if task.data_dir is not None and not Path(task.data_dir).is_dir():
        errors.append(f"{key}.data_dir: no such folder: {task.data_dir}")
    for split, path in (task.files.model_dump().items() if task.files else ()):
        if path is not None and not Path(path).is_file():
            errors.append(f"{key}.files.{split}: no such file: {path}")
    return errors


def _source_adapter(spec: RunSpec) -> list[str]:
    """A local source adapter must hold both files and fit the method; a models:/ URI is resolved at run time."""
    init_from, method = spec.method.init_from, spec.method
    if init_from is None or is_registry_uri(init_from):
        return []
    missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE) if not (Path(init_from) / f).is_file()]
    if missing:
        return [f"method.init_from: no adapter in {init_from}: {' and '.join(missing)} missing"]
    try:
        record = read_record(init_from)
    except ValueError as exc:
        return [f"method.init_from: unreadable {Path(init_from) / CONFIG_FILE}: {exc}"]
    if record.method != method.name:
        return [f"method.init_from: {init_from} holds a {record.method} adapter; a {method.name} run starts from "
                f"a {method.name} adapter"]
    if record.prompt_length != method.prompt_length:
        return [f"method.prompt_length: {method.prompt_length}, but the source adapter {init_from} has "
                f"{record.prompt_length} prompt tokens"]
    sources = record.method_config.get("source_tasks") or [record.task]
    vectors = getattr(method, "init_vectors", "average")
    if method.name == "mpt" and vectors not in ("average", "none", *sources):
        return [f"method.init_vectors: {vectors!r} is not a source task of {init_from} ({', '.join(map(str, sources))}); "
                f"or use 'average' or 'none'"]
    return []


def _missing_files(spec: RunSpec) -> list[str]:
    errors = _missing_data(spec.task, "task") + _source_adapter(spec)
    name = spec.backbone.name
    if (name.startswith(("/", "./", "../")) or Path(name).exists()) and not (Path(name) / "config.json").is_file():
        errors.append(f"backbone.name: {name} is a path but holds no config.json")
    return errors


def _budget_and_search(spec: RunSpec) -> list[str]:
    from deptune.sweep.config import TRAINING_METRICS, SweepSpec
    from deptune.sweep.space import hidden_size, plan_search
    d = hidden_size(spec.backbone)
    errors: list[str] = []
    budget = getattr(spec.method, "budget", None)
    if d is not None and isinstance(spec, SweepSpec):
        errors += plan_search(spec, d)[1]
    if d is not None and budget is not None and not errors:  # the run `deptune train` makes of the spec
        try:
            spec.method.resolve(d)
        except ValueError as exc:
            key = "method.rank" if spec.method.rank is not None and spec.method.prompt_length < budget else \
                "method.prompt_length"
            errors.append(f"{key}: {exc}")
    if isinstance(spec, SweepSpec):
        known = (*TRAINING_METRICS, *(f"eval_{m}" for m in get_task(spec.task.name).metric_names))
        for key, objective in (("objective", spec.sweep.objective), ("second_objective", spec.sweep.second_objective)):
            if objective is not None and objective.metric not in known:
                errors.append(f"sweep.{key}.metric: {objective.metric!r} is not reported; choose one of "
                              f"{', '.join(known)}")
    return errors


def _exceeds_this_machine(spec: RunSpec) -> list[str]:
    from deptune.sweep.config import SweepSpec
    res = spec.resources
    driver = spec.sweep.driver_cpus if isinstance(spec, SweepSpec) else 0.0
    cpus, gpus = os.cpu_count() or 1, _local_gpus()
    need_cpus, need_gpus = driver + res.workers * res.cpus_per_worker, res.workers * res.gpus_per_worker
    errors = []
    if need_cpus > cpus + 1e-9:
        errors.append(f"resources.cpus_per_worker: {res.workers} worker(s) x {res.cpus_per_worker:g} CPU"
                      + (f" + {driver:g} for the trial driver" if driver else "")
                      + f" = {need_cpus:g} CPUs, but this machine has {cpus}; lower resources.workers or "
                        f"cpus_per_worker (fractions are fine), or pass --address to run on a cluster")
    if need_gpus > gpus + 1e-9:
        errors.append(f"resources.gpus_per_worker: {res.workers} worker(s) x {res.gpus_per_worker:g} GPU = "
                      f"{need_gpus:g} GPUs, but this machine has {gpus}; pass --address to run on a cluster")
    return errors


def _local_gpus() -> int:
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0
