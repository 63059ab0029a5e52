"""Killing a Ray Train worker at a chosen step, injected from outside deptune's code.

`ray.init(runtime_env=kill_after_report(control))` gives every worker process Ray's public
`worker_process_setup_hook`: it wraps `ray.train.report` so that the worker of rank R, once it has reported
step S (`control` holds "R S"), deletes `control` and dies by SIGKILL. Deterministic (it dies exactly
after that report), once (the file is gone), and deptune itself carries no test hook.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ray import cloudpickle

CONTROL_ENV = "DEPTUNE_TEST_KILL_AFTER_REPORT"


def _install() -> None:
    """Runs in each new Ray worker process, before any task or actor."""
    import signal

    import ray.train

    report = ray.train.report

    def report_then_maybe_die(metrics, *args, **kwargs):
        report(metrics, *args, **kwargs)
        control = os.environ.get(CONTROL_ENV)
        if not control or not os.path.exists(control) or "step" not in metrics:
            return
        rank, step = (int(v) for v in Path(control).read_text().split())
        if ray.train.get_context().get_world_rank() == rank and int(metrics["step"]) >= step:
            os.remove(control)
            os.kill(os.getpid(), signal.SIGKILL)

    ray.train.report = report_then_maybe_die


def kill_after_report(control: Path, **env: str) -> dict:
    """The runtime env of a cluster whose Train workers die as `control` says (nothing while it is absent)."""
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/
    return {"env_vars": {CONTROL_ENV: str(control), **env}, "worker_process_setup_hook": _install}
