"""What a trial costs on top of its training: the same trials run by a plain in-process Optuna loop, by
`deptune sweep` with `resources.runner: tune` (each trial in its reused Tune actor) and with
`runner: train` (each trial a Ray Train run), side by side in one run.

    .venv/bin/python benchmarks/sweep_overhead.py [--trials 8] [--steps 40] [--concurrent 1] [--also-trials 2]

All runs evaluate the same enqueued configurations in the same order (FIFO, no early stopping), so the
difference is the platform: fixed cost per trial = (wall - training seconds of the plain loop) / trials,
useful fraction = training seconds / wall. The sweeps include everything `deptune sweep` does (MLflow
child runs, the parent's plots and leaderboard, registering the best adapter); the local Ray's start is
shown apart (once per cluster, not per sweep). Runs a local Ray on 127.0.0.1 only.

Two rows explain the rest. The same plain loop run as a fresh Python process (interpreter start and
imports included, as a hand-written script pays them) shows what a new process costs before it trains,
which every Tune trial actor pays once. And each runner's sweep is run a second time with the first
`--also-trials` trials only, so that the cost on top of training splits into a part paid once per sweep
and a marginal part per trial (both sweeps' extra seconds, solved for the two).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
from deptune.cluster import local as local_ray

local_ray.apply()  # before ray is imported

import optuna  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from deptune.backbones import hidden_size  # noqa: E402
from deptune.specs import parse_spec  # noqa: E402
from deptune.sweep.config import SweepSpec  # noqa: E402
from deptune.sweep.space import plan_search, trial_spec  # noqa: E402 -- Ray-free: the plain loop imports no Ray


def spec_for(out: Path, trials: int, steps: int, concurrent: int, runner: str = "tune") -> SweepSpec:
    points = [{"prompt_length": m, "lr_prompt": 0.3, "lr_lowrank": 5e-3} for m in (4, 6, 8, 10, 12, 2)][:trials]
    points += [points[-1]] * (trials - len(points))
    return parse_spec(
        {
            "backbone": {"name": "tiny-bert"},
            "task": {"name": "synthetic", "synthetic_size": 1000},
            "method": {"name": "dept", "prompt_length": 8, "budget": 16, "max_length": 32},
            "search": {"prompt_length": {"low": 2, "high": 14, "step": 2}},
            "train": {
                "steps": steps,
                "batch_size": 32,
                "eval_every": max(steps // 4, 1),
                "warmup_steps": 2,
                "lr_head": 0.01,
                "output_dir": str(out),
                "evaluate_test": False,
            },
            "resources": {
                "workers": 1,
                "runner": runner,
                "cpus_per_worker": (2.0 if runner == "tune" else 1.75) / concurrent - (0 if concurrent == 1 else 0.25),
            },
            "sweep": {
                "trials": trials,
                "max_concurrent": concurrent,
                "driver_cpus": 0.25,
                "enqueue": points,
                "scheduler": {"name": "fifo"},
            },
            "study": {"name": "overhead"},
            "tracking": {"uri": f"sqlite:///{out / 'mlflow.db'}"},
        },
        kind=SweepSpec,
    )


def in_process(spec: SweepSpec) -> tuple[float, list[float]]:
    """A plain Optuna loop calling the training loop in this process: no Ray at all."""
    import torch

    from deptune.train.loop import train
    from deptune.train.session import LocalSession

    plan, _ = plan_search(spec, hidden_size(spec.backbone))
    study = optuna.create_study(direction="maximize")
    for point in spec.sweep.enqueue:
        study.enqueue_trial(point)
    seconds = []
    started = time.perf_counter()
    for _ in range(spec.sweep.trials):
        trial = study.ask()
        run = trial_spec(spec, plan.suggest(trial))
        t0 = time.perf_counter()
        result = train(
            run, session=LocalSession(run.train.output_dir / f"t{trial.number}", torch.device("cpu"), lambda *_: None)
        )
        seconds.append(time.perf_counter() - t0)
        study.tell(trial, result.best_metrics["accuracy"])
    return time.perf_counter() - started, seconds


def fresh_process(trials: int, steps: int) -> float:
    """Seconds of the plain loop as a new Python process: interpreter start, imports, the loop."""
    import subprocess

    started = time.perf_counter()
    subprocess.run(
        [sys.executable, __file__, "--plain-only", "--trials", str(trials), "--steps", str(steps)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def on_ray(specs: list[SweepSpec]) -> tuple[list[float], float]:
    """Each spec's sweep on one local Ray; the walls, and how long Ray took to start."""
    import ray

    from deptune.sweep.driver import run_sweep

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1")
    ray_start = time.perf_counter() - t0
    walls = []
    try:
        for spec in specs:
            started = time.perf_counter()
            run_sweep(spec)
            walls.append(time.perf_counter() - started)
        return walls, ray_start
    finally:
        ray.shutdown()


def split_cost(wall: float, short_wall: float, seconds: list[float], trials: int, short: int) -> tuple[float, float]:
    """(per sweep, marginal per trial) seconds on top of training, from the same sweep at two trial counts
    (the short one runs the first `short` trials of the long one, so its training is those trials')."""
    extra, short_extra = wall - sum(seconds), short_wall - sum(seconds[:short])
    marginal = (extra - short_extra) / (trials - short)
    return extra - marginal * trials, marginal


def split_table(
    runners: list[str], walls: list[float], short_walls: list[float], seconds: list[float], trials: int, short: int
) -> Table:
    table = Table(title=f"the cost on top of training, split: the same sweep with {trials} and with {short} trials")
    for column in (
        "runner",
        f"extra s ({trials} trials)",
        f"extra s ({short} trials)",
        "per sweep s",
        "marginal per trial s",
    ):
        table.add_column(column, justify="right")
    for runner, wall, short_wall in zip(runners, walls, short_walls):
        per_sweep, marginal = split_cost(wall, short_wall, seconds, trials, short)
        table.add_row(
            f"runner: {runner}",
            f"{wall - sum(seconds):.1f}",
            f"{short_wall - sum(seconds[:short]):.1f}",
            f"{per_sweep:.1f}",
            f"{marginal:.2f}",
        )
    return table


PROCESS_KINDS = {
    # what each fresh process of one trial imports before it can do its part (Ray Train V2 inside Tune)
    "Tune trial driver (function trainable)": "import ray.tune, deptune.sweep.trainable",
    "Train controller (+ TorchConfig)": "import ray.train.v2._internal.execution.controller.controller, "
    "ray.train.torch.config",
    "placement-group cleaner": "import ray.train.v2._internal.execution.controller.placement_group_cleaner, "
    "ray.util.state",
    "Train worker (torch, BERT, the loop)": "import ray.train.torch, transformers.models.bert.modeling_bert, "
    "deptune.train.loop",
}


def process_start_costs(repeats: int = 2) -> dict[str, float]:
    """Seconds a fresh Python process spends starting and importing what each of a trial's processes needs
    (median of `repeats`, warm page cache): the part of a trial's fixed cost that is not Ray scheduling."""
    import statistics
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "platform")}
    costs = {}
    for kind, statement in PROCESS_KINDS.items():
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", statement], env=env, check=True)
            runs.append(time.perf_counter() - started)
        costs[kind] = statistics.median(runs)
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--concurrent", type=int, default=1)
    parser.add_argument("--runners", default="tune,train", help="comma-separated: tune, train")
    parser.add_argument(
        "--also-trials",
        type=int,
        default=2,
        help="also run each sweep with its first N trials, to split the cost into per sweep and per trial (0: not)",
    )
    parser.add_argument(
        "--fresh-plain",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the plain loop as a fresh Python process (start + imports included)",
    )
    parser.add_argument("--plain-only", action="store_true", help=argparse.SUPPRESS)  # that fresh process
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.plain_only:
        with tempfile.TemporaryDirectory(prefix="deptune-overhead-") as tmp:
            in_process(spec_for(Path(tmp) / "plain", args.trials, args.steps, 1))
        return
    runners = [r for r in args.runners.split(",") if r]
    short = args.also_trials if 0 < args.also_trials < args.trials else 0
    with tempfile.TemporaryDirectory(prefix="deptune-overhead-") as tmp:
        plain_wall, train_seconds = in_process(spec_for(Path(tmp) / "plain", args.trials, args.steps, 1))
        fresh_wall = fresh_process(args.trials, args.steps) if args.fresh_plain else None
        specs = [spec_for(Path(tmp) / r, args.trials, args.steps, args.concurrent, r) for r in runners]
        specs += [spec_for(Path(tmp) / f"{r}-{short}", short, args.steps, args.concurrent, r) for r in runners if short]
        walls, ray_start = on_ray(specs)
    walls, short_walls = walls[: len(runners)], walls[len(runners) :]
    useful = sum(train_seconds)
    table = Table(
        title=f"{args.trials} trials x {args.steps} steps (tiny-bert, synthetic), "
        f"{args.concurrent} at a time, 2-CPU box"
    )
    for column in ("runner", "wall s", "per trial s", "fixed cost per trial s", "useful fraction", "vs plain"):
        table.add_column(column, justify="right")
    rows = [("in-process Optuna loop", plain_wall)]
    if fresh_wall is not None:
        rows.append(("the same loop, fresh python (start + imports)", fresh_wall))
    rows += [(f"deptune sweep, runner: {r}", w) for r, w in zip(runners, walls)]
    for name, wall in rows:
        table.add_row(
            name,
            f"{wall:.1f}",
            f"{wall / args.trials:.2f}",
            f"{(wall - useful) / args.trials:.2f}",
            f"{useful / wall:.0%}",
            f"{wall / plain_wall:.2f}x",
        )
    console = Console(width=140)
    console.print(table)
    print(
        f"training inside the plain loop: {useful:.1f} s in all ({useful / args.trials:.2f} s a trial); "
        f"local Ray start (once per cluster, not counted above): {ray_start:.1f} s"
    )
    print("fixed cost per trial = (wall - plain training s) / trials; useful fraction = plain training s / wall")
    if short:
        console.print(split_table(runners, walls, short_walls, train_seconds, args.trials, short))
    if "train" not in runners:
        return
    costs = process_start_costs()
    where = Table(
        title="where a runner: train trial's fixed cost goes: the fresh processes it starts, each "
        "paying interpreter start + imports (measured here, one at a time); runner: tune pays "
        "its actor's once per actor"
    )
    where.add_column("process (one per trial unless noted)")
    where.add_column("start + imports s", justify="right")
    for kind, seconds in costs.items():
        where.add_row(kind + (" (one per worker)" if "worker" in kind else ""), f"{seconds:.1f}")
    where.add_row("sum: seconds of a 2-core box spent starting processes, per trial", f"{sum(costs.values()):.1f}")
    console.print(where)


if __name__ == "__main__":
    main()
