"""What `deptune validate` accepts runs: every shipped spec survives its own round trip, and what can be
known before Ray (data columns, a validation split, positions) fails there, with its key path and exit 2.

The cases run `deptune validate` and `deptune sweep` in-process with `ray.init` as a tripwire."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from typer.testing import CliRunner

from deptune.cli import app
from deptune.specs import load_spec, parse_spec
from deptune.sweep.config import SweepSpec
from deptune.train.spec import RunSpec

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "search_spaces").rglob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_spec_survives_its_round_trip(path):
    spec = load_spec(path)
    again = type(spec).model_validate(spec.model_dump())
    assert again == spec
    assert again.model_dump() == spec.model_dump()
    if isinstance(spec, SweepSpec):
        assert spec.base_run() == RunSpec.model_validate(spec.base_run().model_dump())


@pytest.mark.parametrize(
    "method",
    [
        {"name": "prompt_tuning", "prompt_length": 10},
        {"name": "dept", "prompt_length": 8, "budget": 16},
        {"name": "dept", "prompt_length": 8, "rank": 4},
        {"name": "mpt", "prompt_length": 10},
    ],
    ids=lambda m: f"{m['name']}-{'budget' if 'budget' in m else 'rank' if 'rank' in m else 'plain'}",
)
def test_a_sweep_spec_of_every_method_survives_dump_and_validate(method):
    """The crash of PT and MPT sweeps: a dumped spec re-validated counted every search key as given."""
    search = {
        "lr_prompt": {"low": 0.1, "high": 0.3},
        **({"lr_head": {"low": 1e-3, "high": 1e-2}} if method["name"] == "prompt_tuning" else {}),
    }
    spec = parse_spec(
        {
            "backbone": {"name": "tiny-bert"},
            "task": {"name": "synthetic"},
            "method": method,
            "search": search,
            "sweep": {"trials": 2},
        }
    )
    again = SweepSpec.model_validate(spec.model_dump(mode="json"))
    assert again == spec and again.search.ranges().keys() == search.keys()
    assert type(again.method) is type(spec.method)


def test_deptune_train_on_a_sweep_spec_applies_run_checks_only(tmp_path):
    """`--set train.steps=2` is a fine run even though the sweep's grace period (50) would not fit it."""
    spec = load_spec(ROOT / "search_spaces/demo.yaml")
    assert isinstance(spec, SweepSpec) and spec.sweep.scheduler.grace(spec) >= 2
    from deptune.specs import load_run_spec

    run, _ = load_run_spec(ROOT / "search_spaces/demo.yaml", ["train.steps=2", "train.warmup_steps=1"])
    assert type(run) is RunSpec and run.train.steps == 2
    assert run.method == spec.method and run.method.prompt_length == 8  # the method section as written


# ----- failures knowable before Ray ------------------------------------------------------------------------


def _rte_files(tmp: Path, train_header: str = "sentence1,sentence2,label", validation: bool = True) -> dict:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "train.csv").write_text(f"{train_header}\na,b,0\nc,d,1\n")
    files = {"train": str(tmp / "train.csv")}
    if validation:
        (tmp / "dev.csv").write_text("sentence1,sentence2,label\na,b,0\nc,d,1\n")
        files["validation"] = str(tmp / "dev.csv")
    return files


def _spec(tmp: Path, **sections: Any) -> dict:
    base = {
        "backbone": {"name": "tiny-bert", "tiny": {"max_positions": 64}},
        "task": sections.pop("task", None) or {"name": "rte", "files": _rte_files(tmp / "data")},
        "method": {"name": "prompt_tuning", "prompt_length": 8, "max_length": 32},
        "train": {"steps": 20, "batch_size": 2, "warmup_steps": 1, "eval_every": 10, "output_dir": str(tmp / "out")},
        "resources": {"cpus_per_worker": 0.5},
        "search": {"lr_prompt": {"low": 0.1, "high": 0.3}},
        "sweep": {
            "trials": 2,
            "sampler": {"name": "tpe", "startup_trials": 1},
            "driver_cpus": 0.25,
            "scheduler": {"name": "fifo"},
        },
        "study": {"storage": f"sqlite:///{tmp}/study.db"},
        "tracking": {"uri": f"sqlite:///{tmp}/mlflow.db"},
    }
    for key, value in sections.items():
        section, _, field = key.partition("__")
        if field:
            base[section] = {**base[section], field: value}
        else:
            base[section] = value
    return base


CASES = {
    "a column the files lack": (
        lambda tmp: _spec(tmp, task={"name": "rte", "files": _rte_files(tmp / "data", "premise,sentence2,label")}),
        "task.files.train",
        "'sentence1'",
    ),
    "task.columns naming a missing column": (
        lambda tmp: _spec(
            tmp, task={"name": "rte", "files": _rte_files(tmp / "data"), "columns": {"sentence1": "text_a"}}
        ),
        "task.files.train",
        "'text_a' (task field 'sentence1')",
    ),
    "task.columns mapping an unknown field": (
        lambda tmp: _spec(tmp, task={"name": "rte", "files": _rte_files(tmp / "data"), "columns": {"question": "q"}}),
        "task.columns",
        "question",
    ),
    "files without a validation file": (
        lambda tmp: _spec(tmp, task={"name": "rte", "files": _rte_files(tmp / "data", validation=False)}),
        "task.files.validation",
        "required",
    ),
    "a GLUE folder without dev.tsv": (
        lambda tmp: (_glue_dir(tmp), _spec(tmp, task={"name": "rte", "data_dir": str(tmp / "RTE")}))[1],
        "task.data_dir",
        "dev.tsv",
    ),
    "PT prompt + input beyond the positions": (
        lambda tmp: _spec(tmp, method__prompt_length=40),
        "method.max_length",
        "= 72 positions",
    ),
    "a searched prompt beyond the positions": (
        lambda tmp: _spec(
            tmp, search={"prompt_length": {"low": 8, "high": 40}, "lr_prompt": {"low": 0.1, "high": 0.3}}
        ),
        "search.prompt_length.high",
        "= 72 positions",
    ),
    "causal: the answer counts too": (
        lambda tmp: _spec(tmp, backbone={"name": "tiny-gpt2", "tiny": {"max_positions": 44}}),
        "method.max_length",
        "train.max_target_length (8)",
    ),
}


def _glue_dir(tmp: Path) -> None:
    (tmp / "RTE").mkdir(parents=True, exist_ok=True)
    (tmp / "RTE" / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")


@pytest.fixture
def tripwire(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    def refuse(*args, **kwargs):
        raise AssertionError("ray.init was called")

    monkeypatch.setattr(ray, "init", refuse)


def test_the_control_spec_passes_validate(tripwire, tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(_spec(tmp_path)))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0 and f"{path}: ok" in result.output, result.output


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
@pytest.mark.parametrize("command", ["validate", "sweep"])
def test_a_failure_knowable_before_ray_fails_there(tripwire, tmp_path, case, command):
    make, key, mention = CASES[case]
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(make(tmp_path)))
    result = CliRunner().invoke(app, [command, str(path)])
    assert result.exit_code == 2, f"exit {result.exit_code} ({result.exception!r}):\n{result.output}"
    lines = [line.strip() for line in result.output.splitlines()]
    assert any(line.startswith(f"{key}: ") and mention in line for line in lines), result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "out").exists()


def test_a_validation_file_can_be_kept_whole(tmp_path):
    """DePT halves a small task's validation file into validation and test; `validation_split: whole`
    keeps it whole (the test split is then files.test)."""
    from deptune.tasks.config import TaskConfig
    from deptune.tasks.loading import load_splits

    rows = "".join(f"s{i},t{i},{i % 2}\n" for i in range(40))
    (tmp_path / "train.csv").write_text("sentence1,sentence2,label\n" + rows)
    (tmp_path / "dev.csv").write_text("sentence1,sentence2,label\n" + rows[: 20 * 7])
    files = {"train": tmp_path / "train.csv", "validation": tmp_path / "dev.csv"}
    dev = len((tmp_path / "dev.csv").read_text().splitlines()) - 1
    halved = load_splits(TaskConfig(name="rte", files=files))
    whole = load_splits(TaskConfig(name="rte", files=files, validation_split="whole"))
    assert (len(halved.validation), len(halved.test)) == (dev // 2, dev - dev // 2)
    assert (len(whole.validation), len(whole.test), len(whole.train)) == (dev, 0, 40)
    (tmp_path / "test.csv").write_text("sentence1,sentence2,label\nx,y,1\n")
    given = load_splits(
        TaskConfig(name="rte", files={**files, "test": tmp_path / "test.csv"}, validation_split="whole")
    )
    assert (len(given.validation), len(given.test)) == (dev, 1)
