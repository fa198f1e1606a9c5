"""lm-eval integration: the registered ``pararnn`` model, bundled offline tasks, a runner."""

from .local_tasks import LOCAL_GROUP, LOCAL_TASKS, STANDARD_TASKS, tasks_path, write_local_tasks
from .run import run_eval

__all__ = ["LOCAL_GROUP", "LOCAL_TASKS", "STANDARD_TASKS", "run_eval", "tasks_path", "write_local_tasks"]
