"""Every method sweeps on every backbone family, end to end on a real local Ray with a real sqlite study
and MLflow store: the test that would have caught PT and MPT sweeps crashing before training.

And a method defined here, in the test module, registered at run time, validated and swept: adding a
method touches no file outside its own code."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import pytest
import torch
from mlflow import MlflowClient
from optuna.trial import TrialState
from pydantic import Field
from torch import nn
from typer.testing import CliRunner

from deptune.cli import app
from deptune.methods.catalog import methods, register
from deptune.methods.config import PromptConfig
from deptune.methods.model import PromptModel
from deptune.spec_base import FloatRange, IntRange, Range, SpecError
from deptune.specs import parse_spec
from deptune.sweep.config import SweepSpec
from deptune.sweep.driver import run_sweep
from deptune.sweep.leaderboard import ranked_rows
from deptune.sweep.study import load_study, open_storage, storage_url
from stores import mlflow_store
from test_method_contract import check_contract

pytestmark = pytest.mark.slow

FAMILIES = {"seq2seq": "tiny-t5", "causal": "tiny-gpt2", "encoder": "tiny-bert"}
METHODS = {
    "prompt_tuning": ({"name": "prompt_tuning", "prompt_length": 4}, {"prompt_length": {"low": 2, "high": 4}}),
    "dept": ({"name": "dept", "prompt_length": 4, "budget": 8}, {"prompt_length": {"low": 2, "high": 4}}),
    "mpt": ({"name": "mpt", "prompt_length": 4}, {}),
}
OWN_DIMENSIONS = {
    "prompt_tuning": {"prompt_length", "lr_prompt"},
    "dept": {"prompt_length", "lr_prompt", "lr_lowrank"},
    "mpt": {"lr_prompt", "lr_lowrank"},
}


def sweep_spec(tmp_path, method: dict, search: dict, backbone: str, **sweep: Any) -> SweepSpec:
    return parse_spec(
        {
            "backbone": {"name": backbone, "tiny": {"hidden_size": 32, "max_positions": 64, "dropout": 0.0}},
            "task": {"name": "synthetic", "synthetic_size": 200},
            "method": {**method, "max_length": 24},
            "search": {"lr_prompt": {"low": 0.05, "high": 0.5}, **search},
            "train": {
                "steps": 6,
                "batch_size": 16,
                "eval_every": 3,
                "warmup_steps": 1,
                "max_target_length": 4,
                "max_new_tokens": 2,
                "output_dir": str(tmp_path),
                "evaluate_test": False,
            },
            "resources": {"workers": 1, "cpus_per_worker": 1.0},
            "sweep": {
                "trials": 2,
                "sampler": {"name": "tpe", "startup_trials": 1},
                "max_concurrent": 2,
                "scheduler": {"name": "fifo"},
                **sweep,
            },
            "study": {"name": "matrix"},
            "tracking": {"uri": mlflow_store(tmp_path), "register_best": False},
        },
        kind=SweepSpec,
    )


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_sweeps_on_every_family(ray_cluster, tmp_path, method, family):
    method_section, search = METHODS[method]
    spec = sweep_spec(tmp_path, method_section, search, FAMILIES[family])
    run_sweep(spec)
    trials = load_study(spec, open_storage(storage_url(spec))).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, [t.user_attrs.get("fail_reason") for t in trials]
    for trial in trials:
        assert set(trial.params) == OWN_DIMENSIONS[method]
        assert sorted(trial.intermediate_values) == [3, 6]
        assert trial.user_attrs["adapter_params"] > 0
    client = MlflowClient(tracking_uri=spec.tracking.uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("matrix").experiment_id], filter_string="tags.`deptune.role` = 'trial'"
    )
    assert len(runs) == 2
    for run in runs:
        logged = run.data.params
        assert logged["method"] == method
        assert ("lr_lowrank" in logged) == (method != "prompt_tuning")  # MPT's u, v train at lr_lowrank too
        assert client.get_metric_history(run.info.run_id, "objective_per_eval")


def test_a_gp_sweep_searches_two_objectives(ray_cluster, tmp_path):
    """Optuna's GPSampler, named in the spec, drives a multi-objective sweep (logEHVI after one random trial)."""
    method_section, search = METHODS["dept"]
    spec = sweep_spec(
        tmp_path,
        method_section,
        search,
        "tiny-bert",
        trials=3,
        max_concurrent=1,
        sampler={"name": "gp", "startup_trials": 1},
        second_objective={"metric": "step_time_s", "mode": "min"},
    )
    run_sweep(spec)
    trials = load_study(spec, open_storage(storage_url(spec))).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3, [t.user_attrs.get("fail_reason") for t in trials]
    assert all(len(t.values) == 2 and t.values[1] > 0 for t in trials)
    client = MlflowClient(tracking_uri=spec.tracking.uri)
    experiment = client.get_experiment_by_name("matrix").experiment_id
    (parent,) = client.search_runs([experiment], filter_string="tags.`deptune.role` = 'sweep'")
    assert parent.data.params["sampler"] == "gp" and parent.data.params["startup_trials"] == "1"
    assert parent.data.params["scheduler"] == "fifo"


# ----- a method defined here ----------------------------------------------------------------------------


class ScaledPromptConfig(PromptConfig):
    """A toy method: the prompt times one trained scalar, which has its own learning-rate group (`scale`)
    and starts from its own search dimension (`scale_init`). Nothing outside this module names either."""

    name: Literal["scaled_prompt"] = "scaled_prompt"
    prompt_length: int = Field(4, gt=0)
    scale_init: float = Field(1.0, gt=0, description="the scalar's initial value")
    lr_groups: ClassVar[Mapping[str, float]] = {"prompt": 0.3, "scale": 0.01}
    search_dimensions: ClassVar[Mapping[str, type[IntRange] | type[FloatRange]]] = {
        "prompt_length": IntRange,
        "scale_init": FloatRange,
    }
    default_ranges: ClassVar[Mapping[str, Range]] = {
        "lr_prompt": FloatRange(low=0.1, high=0.3),
        "lr_scale": FloatRange(low=1e-3, high=1e-2),
    }

    def refused_search_keys(self) -> dict[str, str]:
        return {"rank": "scaled_prompt has no rank"}

    def adapter_params(self, values, hidden_size: int) -> int:
        return int(values.get("prompt_length", self.prompt_length)) * hidden_size + 1

    def logged_params(self) -> dict[str, Any]:
        return {**super().logged_params(), "scale_init": self.scale_init}


class ScaledPromptModel(PromptModel):
    def __init__(self, backbone, config: ScaledPromptConfig) -> None:
        super().__init__(backbone, config)
        self.scale = nn.Parameter(torch.full((1,), config.scale_init))

    def prompt(self) -> torch.Tensor:
        return self.prompt_embeddings * self.scale

    def method_tensors(self) -> dict[str, torch.Tensor]:
        return {**super().method_tensors(), "scale": self.scale}

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {**super().parameter_groups(), "scale": [self.scale]}


@pytest.mark.parametrize("runner", ["tune", "train"])
def test_a_method_defined_in_a_test_registers_validates_sweeps_logs_and_reports(ray_cluster, tmp_path, runner):
    """Its own learning-rate group and search dimension travel through validation, both runners, the study,
    MLflow, the leaderboard and `deptune report` with no other file touched: one `register` line."""
    register(ScaledPromptConfig, model=ScaledPromptModel)
    assert "scaled_prompt" in methods()
    check_contract("scaled_prompt", "tiny-bert", tmp_path / "contract")  # held to what every method owes
    spec = sweep_spec(
        tmp_path,
        {"name": "scaled_prompt", "prompt_length": 3},
        {"scale_init": {"low": 0.5, "high": 2.0}},
        "tiny-bert",
    )
    spec = SweepSpec.model_validate({**spec.model_dump(), "resources": {"workers": 1, "runner": runner}})
    assert isinstance(spec.method, ScaledPromptConfig)
    assert SweepSpec.model_validate(spec.model_dump()) == spec  # its own round trip
    with pytest.raises(SpecError, match="train.lr_lowrank: scaled_prompt has no learning-rate group 'lowrank'"):
        parse_spec({**spec.model_dump(), "train": {**spec.model_dump()["train"], "lr_lowrank": 0.1}})
    from deptune import checks

    checked = checks.check(spec, "toy")
    assert set(checked.plan.searched) == {"lr_prompt", "lr_scale", "scale_init"}
    run_sweep(spec, plan=checked.plan)
    trials = load_study(spec, open_storage(storage_url(spec))).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, [t.user_attrs.get("fail_reason") for t in trials]
    assert all(t.user_attrs["adapter_params"] == 3 * 32 + 1 for t in trials)
    assert all(1e-3 <= t.params["lr_scale"] <= 1e-2 for t in trials)  # the method's own default range
    assert all(0.5 <= t.params["scale_init"] <= 2.0 for t in trials)
    assert all(t.user_attrs["runner"] == runner for t in trials)

    client = MlflowClient(tracking_uri=spec.tracking.uri)
    experiment = client.get_experiment_by_name("matrix").experiment_id
    runs = client.search_runs([experiment], filter_string="tags.`deptune.role` = 'trial'")
    by_trial = {int(r.data.tags["deptune.optuna_trial"]): r.data.params for r in runs}
    for trial in trials:  # each run logged the values its trial trained with
        logged = by_trial[trial.number]
        assert float(logged["lr_scale"]) == pytest.approx(trial.params["lr_scale"], rel=1e-3)  # 4 digits logged
        assert float(logged["scale_init"]) == pytest.approx(trial.params["scale_init"])

    rows = ranked_rows(load_study(spec, open_storage(storage_url(spec))), ["objective"])
    assert {"lr_prompt", "lr_scale", "scale_init"} <= rows[0].keys()
    report = CliRunner().invoke(app, ["report", "matrix", "--uri", spec.tracking.uri])
    assert report.exit_code == 0, report.output
    assert "lr_scale" in report.output and "scale_init" in report.output
