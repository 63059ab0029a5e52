"""Test-wide settings: servers on 127.0.0.1 only, no telemetry, no hub downloads."""

import os

from deptune.cluster import local as local_ray

local_ray.apply()  # before anything imports ray
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
