"""lm-eval integration: the registered ``pararnn`` model, bundled offline tasks, a runner.

Importing this package registers the lm-eval model ``pararnn`` when lm-eval is installed, so
``lm_eval.simple_evaluate(model="pararnn", ...)`` works after ``import pararnn_hf.eval``.
(lm_eval's own command line imports no plugins: from the shell, use ``pararnn-hf eval`` or
``lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True``.)
"""

from .local_tasks import LOCAL_GROUP, LOCAL_TASKS, STANDARD_TASKS, tasks_path, write_local_tasks
from .run import run_eval

try:
    from . import lm as _lm  # noqa: F401  (registers "pararnn")
except ImportError:  # the [eval] extra is not installed; run_eval says so when called
    pass

__all__ = ["LOCAL_GROUP", "LOCAL_TASKS", "STANDARD_TASKS", "run_eval", "tasks_path", "write_local_tasks"]
