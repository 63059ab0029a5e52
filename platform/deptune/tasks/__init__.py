"""Task registry: every task by name, and `load_splits` to get its data (see DESIGN.md section 3)."""

from __future__ import annotations

from deptune.tasks.base import Example, Task, TaskSplits
from deptune.tasks.glue import TASKS as _BENCHMARK_TASKS
from deptune.tasks.loading import load_splits
from deptune.tasks.synthetic import SYNTHETIC_TASKS

_REGISTRY: dict[str, Task] = {**{t.name: t for t in SYNTHETIC_TASKS}, **{t.name: t for t in _BENCHMARK_TASKS}}
TASK_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def get_task(name: str) -> Task:
    """The registered task called `name` (tasks are stateless, so one shared instance each)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASK_NAMES)}") from None


__all__ = ["TASK_NAMES", "Example", "Task", "TaskSplits", "get_task", "load_splits"]
