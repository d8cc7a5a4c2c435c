"""One module per NLP task, each with the same entry points (finetune, evaluate, Predictor).

Modules are imported on first use; adding a task (token classification, seq2seq, QA, causal LM)
is a new module plus one line in `TASK_MODULES`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from worker.errors import PermanentJobError

TASK_MODULES = {
    "text-classification": "worker.ml.tasks.text_classification",
}


def get_task(name: str) -> ModuleType:
    """Return the module that implements the NLP task `name`."""
    try:
        module_name = TASK_MODULES[name]
    except KeyError:
        known = ", ".join(sorted(TASK_MODULES))
        raise PermanentJobError(f"unknown task {name!r}: supported tasks are {known}") from None
    return importlib.import_module(module_name)
