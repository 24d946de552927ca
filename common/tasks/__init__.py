"""Task types: built-ins plus plugins registered in the ``zcompute.tasks`` entry-point group."""

from __future__ import annotations

from importlib.metadata import entry_points

from common.logs import get_logger
from common.tasks.base import JobView, Shard, TaskType
from common.tasks.filemean import FileMeanTask
from common.tasks.matmul import MatmulTask
from common.tasks.noop import NoopTask
from common.tasks.train import TrainTask

__all__ = ["JobView", "Shard", "TaskType", "load_task_types", "BUILTIN"]

ENTRY_POINT_GROUP = "zcompute.tasks"
BUILTIN: dict[str, type[TaskType]] = {cls.name: cls for cls in (FileMeanTask, MatmulTask, NoopTask, TrainTask)}
log = get_logger(__name__)


def load_task_types() -> dict[str, TaskType]:
    """Built-in types plus every plugin that loads; a broken plugin is logged and skipped."""
    types = {name: cls() for name, cls in BUILTIN.items()}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in BUILTIN:
            continue
        try:
            cls = ep.load()
            task = cls()
            if not isinstance(task, TaskType):
                raise TypeError(f"{ep.value} is not a zcompute TaskType subclass")
        except Exception as e:  # a plugin's own bug must not stop the head or provider
            log.error("task_type.load_failed", task_type=ep.name, entry_point=ep.value, error=repr(e))
            continue
        types[ep.name] = task
    return types
