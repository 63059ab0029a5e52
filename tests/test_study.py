"""The persistent study without Ray: budget-aware sampling, what the searcher tells Optuna for finished,
stopped and failed trials, executions and their seeds, orphans, on sqlite and on the real PostgreSQL
(from $DEPTUNE_TEST_POSTGRES_URL, which .ci/run sets)."""

from __future__ import annotations

import math
import os
import pickle
import time
import uuid
from collections.abc import Callable

import optuna
import pytest
from optuna.trial import TrialState

from deptune.methods.budget import largest_prompt_length
from deptune.spec_base import SpecError
from deptune.specs import parse_spec
from deptune.sweep.config import SweepSpec
from deptune.sweep.searcher import StudySearcher, summarise_error
from deptune.sweep.space import plan_search
from deptune.sweep.study import (
    close_orphans,
    last_execution,
    load_study,
    open_storage,
    orphans,
    start_execution,
    storage_url,
)
from deptune.sweep.trainable import OPTUNA_TRIAL_KEY, RUN_KEY
from deptune.tracking.journal import RunJournal
from deptune.tracking.store import ensure_experiment
from deptune.tracking.trial import PER_EVAL
from deptune.train.config import RESUMED_FROM

POSTGRES_ENV = "DEPTUNE_TEST_POSTGRES_URL"


def sweep_spec(tmp_path, **sections) -> SweepSpec:
    data = {
        "backbone": {"name": "tiny-bert", "tiny": {"hidden_size": 64}},
        "task": {"name": "synthetic"},
        "method": {"name": "dept", "budget": 16, "max_length": 64},
        "search": {"prompt_length": {"low": 2, "high": 14, "step": 2}},
        "train": {"steps": 30, "eval_every": 10, "warmup_steps": 2, "output_dir": str(tmp_path)},
        "study": {"name": f"study-{uuid.uuid4().hex[:8]}"},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return parse_spec(data, kind=SweepSpec)


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_of(request, tmp_path):
    """A function spec -> (url, RDBStorage) on sqlite or on the real PostgreSQL server."""
    if request.param == "postgresql":
        url = os.environ.get(POSTGRES_ENV)
        if not url:
            pytest.skip(f"{POSTGRES_ENV} is not set (CI sets it to the PostgreSQL server on 127.0.0.1:5432)")

        def make(spec):
            spec = spec.model_copy(update={"study": spec.study.model_copy(update={"storage": url})})
            return spec, open_storage(storage_url(spec))
    else:

        def make(spec):
            return spec, open_storage(storage_url(spec))

    return make


def test_budget_plan_derives_rank_and_keeps_the_count_exact(tmp_path):
    spec = sweep_spec(tmp_path)
    plan, errors = plan_search(spec, 64)
    assert errors == []
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(12):
        trial = study.ask()
        params = plan.suggest(trial)
        m, r = params["prompt_length"], params["rank"]
        assert 2 <= m <= 14 and m % 2 == 0
        assert r == (16 - m) * 64 // (64 + 64)  # r = floor((l - m) d / (s + d)), s = d = 64
        assert trial.user_attrs["adapter_params"] == m * 64 + r * 128 == 16 * 64  # exactly the budget
        study.tell(trial, 0.5)


def test_budget_defaults_and_infeasible_ranges(tmp_path):
    spec = sweep_spec(tmp_path, search={"prompt_length": None})
    plan, _ = plan_search(spec, 64)
    assert largest_prompt_length(16, 64, 64) == 14
    assert (plan.prompt_length.low, plan.prompt_length.high) == (14, 14)  # min(20, m_max)
    t5 = sweep_spec(tmp_path, method={"budget": 100, "max_length": 256}, search={"prompt_length": None})
    plan, _ = plan_search(t5, 768)
    assert (plan.prompt_length.low, plan.prompt_length.high) == (20, 98)
    _, errors = plan_search(sweep_spec(tmp_path, search={"prompt_length": {"low": 2, "high": 15}}), 64)
    assert errors and errors[0].startswith("search.prompt_length.high:")
    _, errors = plan_search(sweep_spec(tmp_path, method={"budget": 2}, search={"prompt_length": None}), 64)
    assert errors and errors[0].startswith("method.budget:")


def test_searcher_records_complete_pruned_and_failed_trials(tmp_path, storage_of):
    spec, storage = storage_of(sweep_spec(tmp_path, resources={"runner": "train"}))  # a Tune driver + its worker
    study = load_study(spec, storage)
    execution = start_execution(spec, study)
    plan, _ = plan_search(spec, 64)
    searcher = StudySearcher(
        spec,
        plan,
        study.study_name,
        storage_url(spec),
        optuna.samplers.TPESampler(seed=execution.seed, n_startup_trials=2),
        execution.number,
    )
    for trial_id in ("done", "stopped", "broken", "nan", "last-rung"):
        assert set(searcher.suggest(trial_id)) >= {"prompt_length", "rank", "lr_prompt", "lr_lowrank"}
    for step, value in ((10, 0.6), (20, 0.8), (30, 0.7)):  # the best step is not the last
        searcher.on_trial_result(
            "done",
            {
                "step": step,
                "objective": value,
                "time_total_s": step / 10,
                "trainable_params": 1100,
                "checkpoint_path": f"/ckpt/{step}",
            },
        )
    searcher.on_trial_complete("done", {"step": 30, "objective": 0.7})
    searcher.on_trial_result("stopped", {"step": 10, "objective": 0.4, "time_total_s": 2.0})
    searcher.on_trial_complete("stopped", {"step": 10, "objective": 0.4})
    searcher.on_trial_complete("broken", error=True)
    searcher.fail("broken", summarise_error("Traceback ...\n  File x\nIndexError: index out of range in self\n"))
    searcher.on_trial_result("nan", {"step": 10, "objective": math.nan})
    searcher.on_trial_complete("nan", {"step": 10, "objective": math.nan})
    for step, value in ((10, 0.5), (20, 0.6)):  # ASHA stops it on its last result (a rung at train.steps):
        searcher.on_trial_result("last-rung", {"step": step, "objective": value})  # Tune then sends that result
    searcher.on_trial_complete("last-rung", {"step": 30, "objective": 0.65})  # to on_trial_complete alone

    trials = {t.user_attrs["ray_trial_id"]: t for t in load_study(spec, storage).get_trials()}
    done, stopped, broken, nan, last = (trials[k] for k in ("done", "stopped", "broken", "nan", "last-rung"))
    assert (
        last.state == TrialState.COMPLETE and last.values == [0.65] and sorted(last.intermediate_values) == [10, 20, 30]
    )
    assert done.state == TrialState.COMPLETE and done.values == [0.8]  # the best evaluation, not the last
    assert done.intermediate_values == {10: 0.6, 20: 0.8, 30: 0.7}
    assert done.user_attrs["best_step"] == 20 and done.user_attrs["adapter_path"] == "/ckpt/20"
    assert done.user_attrs["cpu_seconds"] == pytest.approx(3.0 * (0.5 + 1.0))  # driver + one worker
    assert stopped.state == TrialState.PRUNED and stopped.intermediate_values == {10: 0.4}
    assert "stopped at step 10 of 30" in stopped.user_attrs["stop_reason"]
    assert (
        broken.state == TrialState.FAIL and broken.user_attrs["fail_reason"] == "IndexError: index out of range in self"
    )
    assert nan.state == TrialState.FAIL and nan.user_attrs["fail_reason"] == "no evaluation was reported"
    for trial in trials.values():
        assert trial.user_attrs["execution"] == 1
        assert trial.user_attrs["adapter_params"] == 16 * 64


def test_a_sweep_ranking_by_another_metric_keeps_each_trials_best_adapter(tmp_path):
    """Ranked by training loss, a trial's value is its lowest loss, but its adapter is the one the loop kept
    (best validation objective): the checkpoint of the lowest-loss step is one retention deletes. (The ASHA
    kill test failed on it once: the study named a checkpoint that retention had removed.)"""
    spec = sweep_spec(tmp_path, sweep={"objective": {"metric": "train_loss", "mode": "min"}})
    storage = open_storage(storage_url(spec))
    study = load_study(spec, storage)
    execution = start_execution(spec, study)
    plan, _ = plan_search(spec, 64)
    sampler = optuna.samplers.RandomSampler(seed=0)
    searcher = StudySearcher(spec, plan, study.study_name, storage_url(spec), sampler, execution.number)
    searcher.suggest("t")
    for step, objective, loss in ((10, 0.6, 0.5), (20, 0.9, 0.4), (30, 0.9, 0.3), (40, 0.7, 0.35)):
        searcher.on_trial_result("t", {"step": step, "objective": objective, "train_loss": loss})
        searcher.checkpointed("t", f"/ckpt/{step}", step)
    searcher.on_trial_complete("t", {"step": 40, "objective": 0.7, "train_loss": 0.35})
    (trial,) = load_study(spec, storage).get_trials()
    assert trial.state == TrialState.COMPLETE and trial.values == [0.3]
    assert trial.user_attrs["best_step"] == 30  # where the ranking metric was best
    assert trial.user_attrs["adapter_path"] == "/ckpt/20"  # the loop's best adapter: a tie keeps the earlier step


def test_executions_derive_seeds_resume_checks_the_spec_and_orphans_close(tmp_path, storage_of):
    spec, storage = storage_of(sweep_spec(tmp_path))
    study = load_study(spec, storage)
    first = start_execution(spec, study)
    second = start_execution(spec, load_study(spec, storage))
    assert (first.number, second.number) == (1, 2) and first.seed != second.seed
    assert last_execution(spec, load_study(spec, storage)) == second
    changed = spec.model_copy(update={"train": spec.train.model_copy(update={"steps": 31})})
    with pytest.raises(SpecError, match="the spec changed"):
        last_execution(changed, load_study(spec, storage))
    trial = study.ask()
    trial.set_user_attr("execution", 2)
    assert [t.number for t in orphans(study, second)] == [trial.number]
    assert close_orphans(study, storage, second, "driver died") == 1
    frozen = load_study(spec, storage).trials[trial.number]
    assert frozen.state == TrialState.FAIL and frozen.user_attrs["fail_reason"] == "driver died"
    other = spec.model_copy(
        update={
            "sweep": spec.sweep.model_copy(
                update={
                    "second_objective": spec.sweep.objective.model_copy(update={"metric": "step_time_s", "mode": "min"})
                }
            )
        }
    )
    with pytest.raises(SpecError, match="optimises"):  # same study name, other directions
        load_study(other, storage)


def test_unreachable_study_storage_is_a_spec_error():
    with pytest.raises(SpecError, match="study.storage: cannot open"):
        open_storage("postgresql+psycopg://nobody:secret@127.0.0.1:1/none")
    with pytest.raises(SpecError) as info:
        open_storage("postgresql+psycopg://nobody:secret@127.0.0.1:1/none")
    assert "secret" not in str(info.value)


def resumable(tmp_path, steps: int) -> tuple[SweepSpec, str, Callable[[], StudySearcher], Callable]:
    """A study with its first execution; a function that makes the execution's searcher as a driver does
    (journals under tmp_path/journals), and one that writes what rank 0's TrialTracker journals."""
    spec = sweep_spec(tmp_path, train={"steps": steps})
    url = storage_url(spec)
    study = load_study(spec, open_storage(url))
    execution = start_execution(spec, study)
    plan, _ = plan_search(spec, 64)
    journals, tracking = tmp_path / "journals", f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = ensure_experiment(tracking, study.study_name)

    def searcher() -> StudySearcher:
        return StudySearcher(
            spec,
            plan,
            study.study_name,
            url,
            optuna.samplers.TPESampler(seed=execution.seed),
            execution.number,
            journal_root=str(journals),
        )

    def logged(trial_id: str, steps: list[int]) -> None:  # through the real journal
        journal = RunJournal(journals / trial_id, tracking, send="driver")
        if not journal.exists():
            journal.start(experiment, trial_id, find_by={"deptune.ray_trial_id": trial_id}, tags={})
        for step in steps:
            journal.metrics({PER_EVAL: step / 100, "trainable_params": 1100}, step)  # MLflow's name

    return spec, url, searcher, logged


def test_a_restored_searcher_continues_its_trials_with_what_was_logged_meanwhile(tmp_path):
    """--resume: Tune pickles the searcher and restores it into another object; evaluations rank 0 journaled
    for MLflow while the driver was dead join the study, the run's cost adds up, and a trial ASHA stopped is
    told (with the evaluation it logged in flight) once its grace period is over."""
    spec, url, searcher, logged = resumable(tmp_path, steps=40)
    first = searcher()
    first.suggest("resumed")
    now = time.time()
    for step in (10, 20):
        logged("resumed", [step])
        first.on_trial_result(
            "resumed", {"step": step, "objective": step / 100, "time_total_s": step, "timestamp": now - 100 + step}
        )
    first.save(str(tmp_path / "searcher.pkl"))
    logged("resumed", [30])  # after Tune's last snapshot: the driver died before this reached it

    told = []
    second = pickle.loads(pickle.dumps(searcher()))  # as Tune's tuner.pkl holds it
    second.on_finished = told.append
    second.restore(str(tmp_path / "searcher.pkl"))
    assert sorted(load_study(spec, open_storage(url)).trials[0].intermediate_values) == [10, 20, 30]
    logged("resumed", [30, 40])  # the resumed run re-trains 30 from its step-20 checkpoint: logged once
    second.on_trial_result("resumed", {"step": 30, "objective": 0.3, "time_total_s": 3.0, "timestamp": time.time()})
    second.on_trial_complete("resumed", {"step": 40, "objective": 0.4, "time_total_s": 6.0, "timestamp": time.time()})
    trial = load_study(spec, open_storage(url)).trials[0]
    assert trial.state == TrialState.COMPLETE and trial.values == [0.4] and [t.number for t in told] == [0]
    assert trial.intermediate_values == {10: 0.1, 20: 0.2, 30: 0.3, 40: 0.4}
    assert trial.user_attrs["wall_seconds"] == pytest.approx(100 + 6, abs=3)  # both runs
    journal = RunJournal(tmp_path / "journals" / "resumed", "")
    assert sorted(journal.logged_metrics()) == [10, 20, 30, 40]

    second.suggest("stopped")
    logged("stopped", [10])
    second.on_trial_complete("stopped", {"step": 10, "objective": 0.1, "time_total_s": 1.0, "timestamp": time.time()})
    logged("stopped", [20])  # in flight when ASHA stopped it
    second.settle_stopped()
    assert load_study(spec, open_storage(url)).trials[1].state == TrialState.RUNNING  # within its grace period
    second.settle_stopped(grace_s=0.0)
    stopped = load_study(spec, open_storage(url)).trials[1]
    assert stopped.state == TrialState.PRUNED and sorted(stopped.intermediate_values) == [10, 20]
    assert "stopped at step 20 of 40" in stopped.user_attrs["stop_reason"]  # its last step: one was in flight


def test_a_trial_asked_after_the_last_snapshot_keeps_its_dead_run_in_its_record(tmp_path):
    """The driver died after asking a trial and before Tune's next snapshot, and before any of that trial's
    results reached it (killed the instant its first checkpoint appeared): the resumed driver asks the same
    trial again, which resumes from that checkpoint. Its record still starts at the run that began at step 0,
    and what the dead run logged joins the study."""
    spec, url, searcher, logged = resumable(tmp_path, steps=20)
    first = searcher()
    first.save(str(tmp_path / "searcher.pkl"))  # Tune's last snapshot: before the trial was asked
    asked = first.suggest("forgotten")
    logged("forgotten", [10])  # rank 0 logged step 10, then the kill

    second = pickle.loads(pickle.dumps(searcher()))
    second.restore(str(tmp_path / "searcher.pkl"))
    again = second.suggest("new-id")
    assert again[OPTUNA_TRIAL_KEY] == asked[OPTUNA_TRIAL_KEY] and again[RUN_KEY] == "forgotten"
    assert sorted(load_study(spec, open_storage(url)).trials[0].intermediate_values) == [10]
    second.on_trial_complete(
        "new-id", {"step": 20, "objective": 0.2, RESUMED_FROM: 10.0, "time_total_s": 1.0, "timestamp": time.time()}
    )
    trial = load_study(spec, open_storage(url)).trials[0]
    assert trial.state == TrialState.COMPLETE and trial.intermediate_values == {10: 0.1, 20: 0.2}
    assert trial.user_attrs["resumed_from"] == [0, 10]  # the dead run, then the resumed one
