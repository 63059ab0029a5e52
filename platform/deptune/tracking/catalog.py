"""The trackers a sweep spec may name (`tracking.tracker`). A built-in one is named by "module:Class",
imported only when a sweep opens it (so `deptune validate` imports no tracking client); a plugin or a test
may register its class itself."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deptune.tracking.base import ExecutionTracker

TRACKERS: dict[str, str | type[ExecutionTracker]] = {}


def register_tracker(name: str, implementation: str | type[ExecutionTracker]) -> None:
    """Name a tracker (`implementation`: its class, or "module:Class"); a name taken by another one is an error."""
    if TRACKERS.get(name, implementation) != implementation:
        raise ValueError(f"a tracker named {name!r} is registered already ({TRACKERS[name]})")
    TRACKERS[name] = implementation


def tracker_class(name: str) -> type[ExecutionTracker]:
    implementation = TRACKERS[name]
    if isinstance(implementation, str):
        module, cls = implementation.split(":")
        return getattr(importlib.import_module(module), cls)
    return implementation


register_tracker("mlflow", "deptune.tracking.mlflow_execution:MlflowExecutionTracker")
