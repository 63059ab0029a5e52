"""Test-wide settings: servers on 127.0.0.1 only, no telemetry, no hub downloads; the shared fixtures."""

import os

import pytest

from deptune.cluster import local as local_ray

local_ray.apply()  # before anything imports ray
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray of 2 CPUs on 127.0.0.1 for the module's sweeps (one Ray at a time on a machine: a module
    that starts Ray its own way, or in a subprocess, does not use this). The dashboard serves the state API
    that Ray Train's placement-group cleaner needs when ASHA stops a trial."""
    import ray

    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()
