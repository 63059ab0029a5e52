"""Does a run fit? Checked before any worker starts: on this machine (before a local Ray starts) and on
the cluster Ray is connected to."""

from __future__ import annotations

import logging
import math
import os

from deptune.train.spec import RunSpec, SourceSpec

log = logging.getLogger(__name__)


def run_demand(spec: RunSpec | SourceSpec, driver_cpus: float = 0.0) -> dict[str, float]:
    """CPUs and GPUs one run holds while it trains: a sweep trial on Ray Train adds its Tune driver's CPUs;
    one that trains in its Tune actor (`resources.runner: tune`) is that actor alone."""
    res = spec.resources
    driver = driver_cpus if res.resolved_runner == "train" else 0.0
    return {"CPU": driver + res.workers * res.cpus_per_worker, "GPU": res.workers * res.gpus_per_worker}


def exceeds_this_machine(spec: RunSpec | SourceSpec, driver_cpus: float = 0.0) -> list[str]:
    """'key.path: message' lines when a run needs more than this machine has (a local Ray is its size)."""
    res, need = spec.resources, run_demand(spec, driver_cpus)
    driver_cpus = need["CPU"] - res.workers * res.cpus_per_worker
    cpus, gpus = os.cpu_count() or 1, local_gpus()
    errors = []
    if need["CPU"] > cpus + 1e-9:
        errors.append(
            f"resources.cpus_per_worker: {res.workers} worker(s) x {res.cpus_per_worker:g} CPU"
            + (f" + {driver_cpus:g} for the trial driver" if driver_cpus else "")
            + f" = {need['CPU']:g} CPUs, but this machine has {cpus}; lower resources.workers or "
            f"cpus_per_worker (fractions are fine), or pass --address to run on a cluster"
        )
    if need["GPU"] > gpus + 1e-9:
        errors.append(
            f"resources.gpus_per_worker: {res.workers} worker(s) x {res.gpus_per_worker:g} GPU = "
            f"{need['GPU']:g} GPUs, but this machine has {gpus}; pass --address to run on a cluster"
        )
    return errors


def local_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_fits(spec: RunSpec | SourceSpec, driver_cpus: float = 0.0) -> None:
    """Fail before any worker starts when the cluster is too small (unless an autoscaler is awaited);
    `driver_cpus`: what a sweep trial's driver needs besides its workers."""
    import ray

    res, need = spec.resources, run_demand(spec, driver_cpus)
    have = ray.cluster_resources()
    short = {k: (v, have.get(k, 0.0)) for k, v in need.items() if v > have.get(k, 0.0) + 1e-9}
    if not short:
        return
    text = ", ".join(f"{need:g} {kind} (cluster has {got:g})" for kind, (need, got) in short.items())
    message = (
        f"resources: {res.workers} worker(s) x {res.cpus_per_worker:g} CPU / {res.gpus_per_worker:g} GPU need {text}"
    )
    if not res.wait_for_autoscaler:
        raise ValueError(
            message + "; lower resources.workers or the per-worker resources, or set "
            "resources.wait_for_autoscaler: true on an autoscaling cluster"
        )
    log.warning("%s; waiting for the autoscaler (the run fails if workers do not start in time)", message)


def threads_for(cpus: float) -> int:
    """Torch's intra-op threads for a worker holding `cpus` CPUs: the nearest whole number, at least 1 (1.75
    CPUs train on 2 threads; Ray's OMP_NUM_THREADS is the floor, 1, which leaves most of a core idle)."""
    return max(1, math.floor(cpus + 0.5))


def train_on_held_cpus() -> int:
    """Set torch's intra-op threads to the CPUs this Ray worker (a trial's actor, a Ray Train rank) holds, as
    Ray assigned them; the thread count."""
    import ray
    import torch

    threads = threads_for(ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0))
    torch.set_num_threads(threads)
    return threads
