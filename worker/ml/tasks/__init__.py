"""One module per NLP task, each with the same entry points.

Every task module defines:
- `TASK`, its name; `ROLES`, the roles of its labelled data's columns with their default names (input
  role first, target role second); `MODEL_CLASS`, the transformers Auto class of its models;
  `PARAMS`, the parameters' pydantic model of each job kind (finetune, evaluate, batch_inference);
  `TRAINED_HEADS`, endings of the architecture names of models that already do the task;
- `INPUT_ROLES`, the roles batch inference reads from each row (("text",) for most tasks); optionally
  `FORMAT_BY_EXTENSION`, file extensions that mean a task-specific format (.json is SQuAD for QA),
  and `UPLOAD_OPTIONS`, upload form fields of its own (help by name) that `row_schema` takes as
  keyword arguments (multi-label's label_separator);
- `EVAL_METRICS`, what its periodic evaluation during training (eval_steps) reports, main metric first,
  each with whether greater is better: what early stopping may watch (default: loss alone);
- `row_schema(columns)`, the upload check of its rows (a `worker.datafiles.RowSchema`), and
  `check_trainable(stats)`, an `Untrainable` saying why data with those upload stats cannot
  train a model (or None);
- `finetune(params, ...)`, `evaluate(model_dir, ...)` and `Predictor` (with `predict_chunk`) for
  the three job kinds.

Modules are imported on first use and import torch only inside functions, so the API can use their
schemas; adding a task is a new module plus one line in `TASK_MODULES`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType

from worker.errors import PermanentJobError

TASK_MODULES = {
    "text-classification": "worker.ml.tasks.text_classification",
    "multi-label-classification": "worker.ml.tasks.multi_label_classification",
    "token-classification": "worker.ml.tasks.token_classification",
    "translation": "worker.ml.tasks.translation",
    "summarization": "worker.ml.tasks.summarization",
    "text-generation": "worker.ml.tasks.text_generation",
    "question-answering": "worker.ml.tasks.question_answering",
}
TASKS = tuple(TASK_MODULES)
# The task of pretrain jobs and of the models they register: a language model without a task head,
# a base that a fine-tune of any task starts from; not in TASKS (nothing to evaluate or predict).
LANGUAGE_MODELING = "language-modeling"


@dataclass(frozen=True)
class Untrainable:
    """Why a dataset cannot train a task's model; `problem` completes "its <target> column '<name>' ..."."""

    code: str
    problem: str
    details: dict = field(default_factory=dict)


def input_columns(task: str, columns_by_role: dict[str, str], text_column: str) -> dict[str, str]:
    """Return the columns batch inference reads for each of the task's input roles.

    The text role reads `text_column` (the job's choice, else the dataset's input column); other
    roles read the dataset's column of that role (missing ones are left out, for the caller to refuse).
    """
    roles = get_task(task).INPUT_ROLES
    columns = {role: text_column if role == "text" else columns_by_role.get(role) for role in roles}
    return {role: column for role, column in columns.items() if column}


def untrained_for(task: str, architectures: list[str]) -> bool:
    """Say whether a saved model with these architectures lacks the head `task` needs.

    Loading it would give it a new, random head: fine to fine-tune, meaningless to evaluate or run.
    """
    heads = get_task(task).TRAINED_HEADS
    return bool(architectures) and not any(name.endswith(heads) for name in architectures)


def params_model(task: str, kind: str):
    """Return the pydantic model of a `kind` job's parameters for `task`."""
    if kind == "pretrain":
        from worker.params import PretrainParams

        return PretrainParams
    if kind == "merge":
        from worker.params import MergeParams

        return MergeParams
    return get_task(task).PARAMS[kind]


def tasks_of(kind: str) -> tuple[str, ...]:
    """Return the tasks a job of `kind` can be submitted for (pretraining has none of its own)."""
    return (LANGUAGE_MODELING,) if kind == "pretrain" else TASKS


def eval_metrics(task: str) -> dict[str, bool]:
    """Return what `task`'s evaluation during training reports (metric -> greater is better), main one first."""
    if task == LANGUAGE_MODELING:  # pre-training's periodic evaluation: the held-out loss
        return {"loss": False}
    return getattr(get_task(task), "EVAL_METRICS", {"loss": False})


def get_task(name: str) -> ModuleType:
    """Return the module that implements the NLP task `name`."""
    try:
        module_name = TASK_MODULES[name]
    except KeyError:
        known = ", ".join(sorted(TASK_MODULES))
        raise PermanentJobError(f"unknown task {name!r}: supported tasks are {known}") from None
    return importlib.import_module(module_name)
