"""The GPU checks, as one prepared script for a machine with a CUDA card (one H200: under 8 minutes).

    .venv/bin/python benchmarks/gpu_check.py [--skip-efficiency]

1. Training on the GPU through Ray Train with NCCL: 2 DDP workers when the machine has 2+ GPUs, else one
   worker (NCCL still initialises), in fp32 and in bf16 autocast; the loss must fall and stay finite.
2. A fractional-GPU sweep: 4 trials sharing one card (0.25 GPU each, 4 at a time), with
   `resources.runner: tune` and `runner: train`; every trial must complete, and the wall times compare.
3. `benchmarks/efficiency.py` at the T5-Base shape (PT l=100 vs DePT m=60, r=30): step time, memory,
   inference latency.
Prints one table of every figure; exits 1 if a check failed. Runs a local Ray on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))
from deptune.cluster import local as local_ray  # noqa: E402

local_ray.apply()  # before ray is imported

import torch  # noqa: E402

from deptune.specs import parse_spec  # noqa: E402
from deptune.sweep.config import SweepSpec  # noqa: E402
from deptune.train.spec import RunSpec  # noqa: E402

T5ISH = {"name": "tiny-t5", "tiny": {"hidden_size": 256, "layers": 4, "heads": 4, "ff_size": 1024}}


def run_spec(out: Path, workers: int, precision: str) -> RunSpec:
    return parse_spec(
        {
            "backbone": T5ISH,
            "task": {"name": "synthetic", "synthetic_size": 2000},
            "method": {"name": "dept", "prompt_length": 20, "budget": 40, "max_length": 64},
            "train": {
                "steps": 60,
                "batch_size": 32,
                "eval_every": 30,
                "warmup_steps": 5,
                "lr_prompt": 0.3,
                "lr_lowrank": 1e-3,
                "precision": precision,
                "output_dir": str(out),
                "evaluate_test": False,
            },
            "resources": {"workers": workers, "cpus_per_worker": 1, "gpus_per_worker": 1, "runner": "train"},
        },
        kind=RunSpec,
    )


def sweep_spec(out: Path, runner: str) -> SweepSpec:
    return parse_spec(
        {
            "backbone": T5ISH,
            "task": {"name": "synthetic", "synthetic_size": 2000},
            "method": {"name": "dept", "prompt_length": 20, "budget": 40, "max_length": 64},
            "search": {"prompt_length": {"low": 10, "high": 30, "step": 5}},
            "train": {
                "steps": 60,
                "batch_size": 32,
                "eval_every": 20,
                "warmup_steps": 5,
                "output_dir": str(out),
                "evaluate_test": False,
                "precision": "fp32",
            },
            "resources": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0.25, "runner": runner},
            "sweep": {
                "trials": 4,
                "max_concurrent": 4,
                "driver_cpus": 0.5,
                "sampler": {"name": "tpe", "startup_trials": 2},
                "scheduler": {"name": "fifo"},
            },
            "study": {"name": f"gpu-{runner}"},
            "tracking": {"uri": f"sqlite:///{out}/mlflow.db", "register_best": False},
        },
        kind=SweepSpec,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-efficiency", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this script is for a GPU machine")
    import ray

    from deptune.cluster.trainer import run_on_ray
    from deptune.sweep.driver import run_sweep

    gpus = torch.cuda.device_count()
    rows: list[tuple[str, str, str]] = [("device", torch.cuda.get_device_name(0), f"{gpus} GPU(s)")]
    failed = False
    ray.init(
        num_cpus=8, num_gpus=gpus, include_dashboard=True, dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1"
    )
    try:
        with tempfile.TemporaryDirectory(prefix="deptune-gpu-") as tmp:
            workers = 2 if gpus >= 2 else 1
            for precision in ("fp32", "bf16"):
                started = time.perf_counter()
                try:
                    result = run_on_ray(run_spec(Path(tmp) / f"ddp-{precision}", workers, precision))
                    losses = [r["train_loss"] for r in result.history]
                    ok = all(x == x for x in losses) and losses[-1] < losses[0]
                    rows.append(
                        (
                            f"NCCL DDP, {workers} worker(s), {precision}",
                            "ok" if ok else "LOSS DID NOT FALL",
                            f"{time.perf_counter() - started:.1f} s, loss {losses[0]:.3f} -> {losses[-1]:.3f}, "
                            f"peak {result.history[-1]['peak_memory_mb']:.0f} MiB",
                        )
                    )
                    failed |= not ok
                except Exception as exc:  # noqa: BLE001 -- a check that fails is a row of the table
                    rows.append((f"NCCL DDP, {workers} worker(s), {precision}", "FAILED", str(exc)[:200]))
                    failed = True
            for runner in ("tune", "train"):
                spec = sweep_spec(Path(tmp) / f"sweep-{runner}", runner)
                started = time.perf_counter()
                try:
                    outcome = run_sweep(spec)
                    states = [t.state.name for t in outcome.study.trials]
                    ok = states.count("COMPLETE") == 4
                    rows.append(
                        (
                            f"4 trials x 0.25 GPU, runner {runner}",
                            "ok" if ok else "NOT ALL COMPLETE",
                            f"{time.perf_counter() - started:.1f} s wall, states {states}",
                        )
                    )
                    failed |= not ok
                except Exception as exc:  # noqa: BLE001
                    rows.append((f"4 trials x 0.25 GPU, runner {runner}", "FAILED", str(exc)[:200]))
                    failed = True
    finally:
        ray.shutdown()
    width = max(len(r[0]) for r in rows)
    print("\n" + "\n".join(f"{a:<{width}}  {b:<16}  {c}" for a, b, c in rows))
    if not args.skip_efficiency:
        out = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks/efficiency.py"), "--shapes", "t5-base"],
            capture_output=True,
            text=True,
        )
        print(out.stdout[-4000:] or out.stderr[-2000:])
        failed |= out.returncode != 0
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
