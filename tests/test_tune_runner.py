"""`resources.runner: tune`: a one-worker trial trains inside its Tune trial actor, which Tune reuses for
the next trial, on a per-process cache of the frozen backbone and the tokenised data.

In-process (no Ray): a cached trial is the same trial a fresh process runs, the frozen weights never
change, an encoder's head starts each trial afresh. On a real local Ray: trials share one actor (one
backbone load), ASHA stops a trial mid-training and the next trial reuses its actor, and a trial whose
actor is SIGKILLed resumes from its checkpoint and finishes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState
from ray.util.state import list_actors

from deptune.backbones import Backbone, head_names
from deptune.methods.record import read_record
from deptune.specs import parse_spec
from deptune.sweep.config import SweepSpec
from deptune.sweep.driver import run_sweep
from deptune.sweep.space import trial_spec
from deptune.sweep.study import load_study, open_storage, storage_url
from deptune.train.cache import ProcessCache
from deptune.train.loop import train
from deptune.train.session import LocalSession
from stores import mlflow_store
from studies import study_trials

TRIAL = {"prompt_length": 4, "lr_prompt": 0.3, "lr_lowrank": 5e-3}


def spec(
    tmp_path: Path,
    *,
    steps: int = 12,
    trials: int = 2,
    enqueue: list | None = None,
    scheduler=None,
    backbone: str = "tiny-bert",
    **resources,
) -> SweepSpec:
    return parse_spec(
        {
            "backbone": {"name": backbone, "tiny": {"hidden_size": 32, "max_positions": 64}},  # dropout on
            "task": {"name": "synthetic", "synthetic_size": 300},
            "method": {"name": "dept", "prompt_length": 4, "budget": 8, "max_length": 24},
            "search": {
                "prompt_length": {"low": 2, "high": 6, "step": 2},
                "lr_prompt": {"low": 1e-9, "high": 1.0},
                "lr_lowrank": {"low": 1e-9, "high": 1.0},
            },  # wide: the enqueued points must lie inside
            "train": {
                "steps": steps,
                "batch_size": 16,
                "eval_every": 4,
                "warmup_steps": 1,
                "lr_head": 0.05,
                "output_dir": str(tmp_path),
                "evaluate_test": False,
            },
            "resources": {"workers": 1, "cpus_per_worker": 1.0, **resources},
            "sweep": {
                "trials": trials,
                "sampler": {"name": "tpe", "startup_trials": 1},
                "max_concurrent": 1,
                "scheduler": scheduler or {"name": "fifo"},
                "enqueue": enqueue or [],
            },
            "study": {"name": "runner"},
            "tracking": {"uri": mlflow_store(tmp_path), "register_best": False},
        },
        kind=SweepSpec,
    )


def curve(result) -> list[tuple]:
    return [(r["step"], r["objective"], r["eval_f1"], round(r["train_loss"], 4)) for r in result.history]


def frozen_digest(backbone: Backbone) -> str:
    """A hash of every backbone weight a trial must never change (all but an encoder's head)."""
    digest, head = hashlib.sha256(), set(head_names(backbone))
    for name, tensor in sorted(backbone.model.state_dict().items()):
        if name not in head:
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()


# ----- the cache, in this process ------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["tiny-bert", "tiny-t5"])
def test_a_cached_trial_is_the_trial_a_fresh_process_runs(tmp_path, backbone):
    sweep = spec(tmp_path, backbone=backbone)
    first = trial_spec(sweep, {"prompt_length": 2, "lr_prompt": 0.1, "lr_lowrank": 1e-3})
    second = trial_spec(sweep, TRIAL)
    quiet = lambda *_: None  # noqa: E731
    alone = train(second, session=LocalSession(tmp_path / "alone", torch.device("cpu"), quiet))
    cache = ProcessCache()
    train(first, session=LocalSession(tmp_path / "a", torch.device("cpu"), quiet), cache=cache)
    loaded = cache.checkout(sweep.backbone, sweep.task, 2, sweep.train.seed, torch.device("cpu"))
    digest = frozen_digest(loaded.backbone)
    reused = train(second, session=LocalSession(tmp_path / "b", torch.device("cpu"), quiet), cache=cache)
    assert curve(reused) == curve(alone)  # same metrics, same losses: same init, same dropout
    shared = cache.checkout(sweep.backbone, sweep.task, 2, sweep.train.seed, torch.device("cpu"))
    assert shared is loaded  # one backbone load for both trials
    assert frozen_digest(shared.backbone) == digest  # the frozen weights were never written
    for name, param in shared.backbone.model.named_parameters():  # the head is back at its initial values
        assert not param.requires_grad and param.grad is None
        if name in shared.head:
            torch.testing.assert_close(param, shared.head[name], rtol=0, atol=0)


def test_a_different_backbone_or_task_is_loaded_afresh(tmp_path):
    cache = ProcessCache()
    sweep = spec(tmp_path)
    cpu = torch.device("cpu")
    one = cache.checkout(sweep.backbone, sweep.task, 2, 42, cpu)
    assert cache.checkout(sweep.backbone, sweep.task, 2, 42, cpu) is one
    other_task = sweep.task.model_copy(update={"synthetic_size": 200})
    two = cache.checkout(sweep.backbone, other_task, 2, 42, cpu)
    assert two is not one and len(two.splits.train) != len(one.splits.train)
    other_seed = cache.checkout(sweep.backbone, other_task, 2, 7, cpu)
    assert other_seed is not two and other_seed.splits.train


def test_a_load_is_frozen_out_of_the_collector_and_a_trials_garbage_is_still_collected(tmp_path):
    """What a backbone load leaves alive is frozen (`gc.freeze`): the collection after each trial scans only
    what was made since, and still frees the trial's own reference cycles; `release` unfreezes."""
    import gc
    import weakref

    from deptune.train.cache import release_trial_memory

    class Node:
        pass

    gc.unfreeze()
    cache, sweep = ProcessCache(), spec(tmp_path)
    cache.checkout(sweep.backbone, sweep.task, 2, 42, torch.device("cpu"))
    frozen = gc.get_freeze_count()
    assert frozen > 0
    cycle = Node()
    cycle.me = cycle  # a trial's garbage that only the cyclic collector frees
    dead = weakref.ref(cycle)
    del cycle
    release_trial_memory(torch.device("cpu"))
    # collected; the load stays frozen (a frozen object that dies by reference count leaves the frozen set,
    # which other tests' threads may do meanwhile: the count may drop a little, never to 0 nor above)
    after = gc.get_freeze_count()
    assert dead() is None and frozen // 2 < after <= frozen
    cache.checkout(sweep.backbone, sweep.task, 2, 42, torch.device("cpu"))  # a hit: nothing more frozen
    assert frozen // 2 < gc.get_freeze_count() <= after
    cache.release()
    assert gc.get_freeze_count() == 0


# ----- on Ray -----------------------------------------------------------------------------------------------


def tune_results(sweep: SweepSpec, execution_name: str) -> dict[str, list[dict]]:
    root = Path(sweep.train.ray_storage()) / execution_name
    return {
        p.parent.name: [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
        for p in root.glob("*/result.json")
    }


@pytest.mark.slow
def test_trials_share_one_actor_and_memory_does_not_grow(ray_cluster, tmp_path):
    points = [{"prompt_length": m, "lr_prompt": 0.3, "lr_lowrank": 5e-3} for m in (2, 4, 6, 4)]
    sweep = spec(tmp_path, trials=4, enqueue=points, cpus_per_worker=1.75)  # Ray's OMP_NUM_THREADS: 1
    outcome = run_sweep(sweep)
    results = tune_results(sweep, outcome.execution.name)
    assert len(results) == 4
    assert len({r["pid"] for rows in results.values() for r in rows}) == 1  # one actor ran every trial
    assert {r["torch_threads"] for rows in results.values() for r in rows} == {2}  # 1.75 CPUs held: 2 threads
    by_start = sorted(results.values(), key=lambda rows: rows[0]["timestamp"])
    peaks = [rows[-1]["peak_memory_mb"] for rows in by_start]
    assert peaks[-1] <= peaks[1] * 1.05 + 16, peaks  # trial 2 onwards: no growth beyond noise
    trials = load_study(sweep, open_storage(storage_url(sweep))).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    for trial in trials:  # the checkpoint Tune kept at the trial's best step holds that step's adapter
        adapter = Path(trial.user_attrs["adapter_path"])
        assert adapter.parent.name in results and adapter.parent.parent.name == outcome.execution.name
        assert read_record(adapter).method == "dept"
        best = max(trial.intermediate_values, key=trial.intermediate_values.get)
        row = next(r for r in results[adapter.parent.name] if r.get("checkpoint_dir_name") == adapter.name)
        assert row["step"] == best == trial.user_attrs["best_step"]


@pytest.mark.slow
def test_asha_stops_a_trial_mid_training_and_the_next_trial_reuses_its_actor(ray_cluster, tmp_path):
    good = {"prompt_length": 4, "lr_prompt": 0.5, "lr_lowrank": 1e-2}
    still = {"prompt_length": 4, "lr_prompt": 1e-9, "lr_lowrank": 1e-9}  # learns nothing
    later = {**good, "prompt_length": 6}  # an enqueued duplicate of `good` would be skipped
    sweep = spec(
        tmp_path,
        steps=24,
        trials=3,
        enqueue=[good, still, later],
        scheduler={"name": "asha", "grace_period": 8, "reduction_factor": 2},
    )
    outcome = run_sweep(sweep)
    trials = load_study(sweep, open_storage(storage_url(sweep))).get_trials()
    assert [t.state for t in trials[:2]] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert max(trials[1].intermediate_values) < 24 and trials[2].params == later
    assert trials[2].state in (TrialState.COMPLETE, TrialState.PRUNED) and trials[2].intermediate_values
    results = tune_results(sweep, outcome.execution.name)
    assert len({rows[0]["pid"] for rows in results.values()}) == 1  # the stopped trial's actor ran the next


@pytest.mark.slow
def test_a_trial_whose_actor_is_killed_resumes_from_its_checkpoint(ray_cluster, tmp_path):
    sweep = spec(tmp_path, steps=80, trials=1, enqueue=[TRIAL])
    killed: list[int] = []

    def kill_after_step_16() -> None:
        """Kill the trial's actor once the study holds its step-16 evaluation: Tune's driver handles a trial's
        results in order, so step 12's result and checkpoint are then Tune's, and the restart must resume from
        step 12 or later. The actor is looked up first: the state API can take seconds."""
        deadline, pid, url = time.monotonic() + 240, None, storage_url(sweep)
        while time.monotonic() < deadline:
            if pid is None:
                alive = list_actors(filters=[("class_name", "=", "ImplicitFunc"), ("state", "=", "ALIVE")])
                pid = alive[0].pid if alive else None
            elif any(16 in t.intermediate_values for t in study_trials(url, sweep.study.name)):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.1 if pid else 0.3)

    killer = threading.Thread(target=kill_after_step_16, daemon=True)
    killer.start()
    outcome = run_sweep(sweep)
    killer.join(timeout=5)
    assert killed, "the trial never reported step 16"
    (trial,) = load_study(sweep, open_storage(storage_url(sweep))).get_trials()
    assert trial.state == TrialState.COMPLETE and trial.user_attrs["last_step"] == 80
    assert sorted(trial.intermediate_values) == list(range(4, 81, 4))
    rows = next(iter(tune_results(sweep, outcome.execution.name).values()))
    assert rows[-1]["step"] == 80 and rows[-1]["pid"] != killed[0]  # finished in a new actor
    resumed_from = [r["step"] for r in rows if r["pid"] != killed[0]][0]
    assert 12 < resumed_from < 80  # from a checkpoint Tune had at the kill, not from the start (step 4)
