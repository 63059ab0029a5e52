"""Every task by name: the built-in synthetic tasks, the GLUE / SuperGLUE benchmark tasks and extractive QA."""

from __future__ import annotations

from deptune.tasks.base import Task
from deptune.tasks.glue import TASKS as BENCHMARK_TASKS
from deptune.tasks.qa import QA_TASKS
from deptune.tasks.synthetic import SYNTHETIC_TASKS

_TASKS: dict[str, Task] = {
    **{t.name: t for t in SYNTHETIC_TASKS},
    **{t.name: t for t in BENCHMARK_TASKS},
    **{t.name: t for t in QA_TASKS},
}
TASK_NAMES: tuple[str, ...] = tuple(_TASKS)


def get_task(name: str) -> Task:
    """The registered task called `name` (tasks are stateless, so one shared instance each)."""
    try:
        return _TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASK_NAMES)}") from None
