"""Test-wide settings: servers on 127.0.0.1 only, no telemetry, no hub downloads; the shared fixtures."""

import os
import threading

import pytest

from deptune.cluster import local as local_ray

local_ray.apply()  # before anything imports ray
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # the tests' servers run as deploy/ runs them
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))  # `make test-fast` runs pytest-xdist workers
if WORKERS > 1:  # each worker's torch takes its share of the cores: all of them each made the lane 3x slower
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // WORKERS)))


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray of 2 CPUs on 127.0.0.1 for the module's sweeps (one Ray at a time on a machine: a module
    that starts Ray its own way, or in a subprocess, does not use this). The dashboard serves the state API
    that Ray Train's placement-group cleaner needs when ASHA stops a trial."""
    import ray

    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def no_deptune_thread_outlives_its_test():
    """A deptune thread left running (a driver's journal sender) lists the storage through pyarrow until the
    interpreter exits, and a thread inside pyarrow during finalization can crash the exiting process: a CI
    run segfaulted so after every test had passed. Threads that are finishing get 10 s."""
    before = set(threading.enumerate())
    yield
    started = [t for t in threading.enumerate() if t not in before and t.name.startswith("deptune-")]
    for thread in started:
        thread.join(timeout=10)
    alive = [t.name for t in started if t.is_alive()]
    assert not alive, f"threads outlived the test: {alive}"


ONE_AT_A_TIME = pytest.mark.skip(
    reason="starts Ray, a server or a sweep: one at a time, without -n (`make test`); -n is for `make test-fast`"
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """pytest-xdist workers run tests side by side: the ones that start Ray, a server or a sweep are skipped
    there, saying why (one Ray cluster at a time on a machine; a module's shared cluster started once)."""
    if WORKERS > 1:
        for item in items:
            if item.get_closest_marker("slow") or item.get_closest_marker("cluster"):
                item.add_marker(ONE_AT_A_TIME)
