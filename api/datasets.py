"""Dataset upload, listing, stats and deletion."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from flask import Blueprint, jsonify, request

from api import db_session, services, storage
from api.auth import tenant_id
from api.openapi import parse_query, spec
from api.schemas import DatasetList, DatasetListQuery, DatasetOut
from db.errors import InvalidInput
from db.models import Dataset
from db.services.datasets import delete_dataset, get_dataset, list_datasets
from worker.datafiles import DataFileError, RowSchema, TextRows, detect_format, ingest
from worker.ml.tasks import TASKS, get_task
from worker.storage import StorageUnavailable

log = logging.getLogger(__name__)

bp = Blueprint("datasets", __name__)

UPLOAD_FIELDS = {
    "file": "CSV, TSV, JSONL, Parquet, CoNLL or plain-text (.txt) file. A .txt file is unlabelled text in a "
            "column `text`: documents separated by blank lines, or one per line where no blank line separates them.",
    "name": "Display name (default: the file name).",
    "task": f"The task whose labelled data this is: {', '.join(TASKS)}. Omit for text to run a model on "
            "(or for text classification, when label_column is given).",
    "text_column": "Column holding the text (default `text`).",
    "label_column": "Column holding the label (text classification; the labels, multi-label-classification); omit "
                    "for unlabelled data.",
    "tokens_column": "token-classification: column holding each sentence's tokens (default `tokens`).",
    "tags_column": "token-classification: column holding each token's BIO tag (default `tags`).",
    "source_column": "translation: column holding the source text (default `source`).",
    "target_column": "translation: column holding the reference translation (default `target`).",
    "document_column": "summarization: column holding the document (default `document`).",
    "summary_column": "summarization: column holding the reference summary (default `summary`).",
    "target_file": "translation: a plain-text file parallel to `file` (line N translates line N of `file`).",
    "question_column": "question-answering: column holding the question (default `question`).",
    "context_column": "question-answering: column holding the context (default `context`).",
    "answers_column": 'question-answering: column holding {"text": [...], "answer_start": [...]} (default `answers`).',
    "prompt_column": "text-generation: column holding the prompt (default `prompt`; or plain `text`).",
    "completion_column": "text-generation: column holding the completion trained on (default `completion`).",
    "format": "csv | tsv | jsonl | parquet | conll | squad | text (default: from the file name; .json is SQuAD for "
              "question-answering, .txt is text).",
} | {name: help for task in TASKS for name, help in getattr(get_task(task), "UPLOAD_OPTIONS", {}).items()}
COLUMN_NAME_MAX_CHARS = 200  # the width of datasets.text_column and label_column
OPTION_MAX_CHARS = 10  # a task's own upload option, such as a label separator


@bp.post("/datasets")
@spec("Upload a dataset", response=DatasetOut, status=201, multipart=UPLOAD_FIELDS)
def upload_dataset():
    dataset = store_upload(request.files, request.form)
    return jsonify(DatasetOut.model_validate(dataset).model_dump(mode="json")), 201


def store_upload(files, form) -> Dataset:
    """Check and store the tenant's upload (`files` and `form` as in a multipart request); return the
    committed dataset or raise InvalidInput saying what to fix (the dashboard's upload form uses it too)."""
    upload = files.get("file")
    if upload is None:
        raise InvalidInput("send the file as multipart/form-data in a field named 'file'", code="file_missing")
    name = _form_value((form.get("name") or Path(upload.filename or "dataset").name)[:200], "name")
    task, schema = _row_schema(form)
    target = files.get("target_file")
    if target is not None and len(schema.columns) < 2:
        raise InvalidInput("target_file pairs with file for a task of two texts (task=translation); add "
                           "task=... or upload one file", code="target_file_unexpected")
    try:
        by_extension = getattr(get_task(task), "FORMAT_BY_EXTENSION", None) if task else None
        fmt = "parallel" if target is not None else detect_format(upload.filename, form.get("format") or None,
                                                                   by_extension)
    except DataFileError as exc:
        raise InvalidInput(exc.message, code=exc.code, details=exc.details) from None
    return _store(upload, name=name, fmt=fmt, task=task, schema=schema, target=target)


def _row_schema(form) -> tuple[str | None, RowSchema]:
    """Return the upload's task (None for plain text) and the schema its rows must follow.

    A task's columns come from `<role>_column` fields, defaulting to the role's usual name.
    """
    label_column = _column(form, "label_column", None)
    task = form.get("task", "").strip() or ("text-classification" if label_column else None)
    if task is not None and task not in TASKS:
        raise InvalidInput(f"task {task!r} is not supported; use one of {', '.join(TASKS)}",
                           code="unknown_task", details={"field": "task", "tasks": list(TASKS)})
    options = _task_options(form, task)
    if task is None:
        return None, TextRows(_column(form, "text_column", "text"), None)
    module = get_task(task)
    return task, module.row_schema({role: _column(form, f"{role}_column", default)
                                    for role, default in module.ROLES.items()}, **options)


def _task_options(form, task: str | None) -> dict[str, str]:
    """Return the upload options of `task` the form gives; refuse an option of another task."""
    options = {}
    for other in TASKS:
        for name in getattr(get_task(other), "UPLOAD_OPTIONS", {}):
            value = form.get(name) or None
            if value is None:
                continue
            if other != task:
                raise InvalidInput(f"{name} applies to task={other}; this upload is "
                                   f"{f'task={task}' if task else 'plain text'}: add task={other} or leave {name} out",
                                   code="option_not_for_task", details={"field": name, "task": other})
            options[name] = _form_value(value, name, OPTION_MAX_CHARS)
    return options


def _column(form, field: str, default: str | None) -> str | None:
    return _form_value(form.get(field, "").strip() or default, field, COLUMN_NAME_MAX_CHARS)


def _form_value(value: str | None, field: str, max_chars: int | None = None) -> str | None:
    """Refuse a form value the database cannot store: one with a NUL character, or too long."""
    if value is not None and "\x00" in value:
        raise InvalidInput(f"{field} contains a NUL character; remove it", details={"field": field})
    if value is not None and max_chars is not None and len(value) > max_chars:
        raise InvalidInput(f"{field} is longer than {max_chars} characters; rename the column",
                           details={"field": field})
    return value


def _check_storable(columns: list[str], labels: dict[str, int]) -> None:
    """Refuse column names and labels with a NUL character (PostgreSQL cannot store one)."""
    for column in columns:
        if "\x00" in column:
            raise InvalidInput(f"column name {column!r} contains a NUL character; rename the column",
                               code="bad_column_name", details={"column": column})
    for label in labels:
        if "\x00" in label:
            raise InvalidInput(f"label {label!r} contains a NUL character; remove it from every row",
                               code="bad_label", details={"label": label})


def _store(upload, *, name: str, fmt: str, task: str | None, schema: RowSchema, target=None) -> Dataset:
    """Ingest to a temporary file, rename it, store it, then commit the row; remove the file on any failure."""
    directory = Path(services().settings.data_dir).resolve() / "datasets"
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{uuid.uuid4().hex}.jsonl"  # server-generated: the client's filename never reaches disk
    temporary = final.with_suffix(".part")
    try:
        result = ingest(upload.stream, fmt=fmt, dest=temporary, schema=schema,
                        target_src=target.stream if target is not None else None)
        _check_storable(result.columns, result.stats.get("label_distribution", {}))
        size = _size(upload.stream)
        os.replace(temporary, final)
    except DataFileError as exc:
        raise InvalidInput(exc.message, code=exc.code, details=exc.details) from None
    finally:
        temporary.unlink(missing_ok=True)
    try:
        location = storage().publish(final)
    finally:
        if storage().remote:
            final.unlink(missing_ok=True)  # in the bucket now (the workers fetch it), or the upload failed
    try:
        session = db_session()
        columns = list(schema.columns.values())  # the input role first, the target role last
        dataset = Dataset(
            tenant_id=tenant_id(), name=name, format=fmt, task=task, column_map=schema.columns,
            # Labelled data of any task has a target; a language model's plain text is its own.
            text_column=columns[0], label_column=columns[-1] if task and getattr(schema, "labelled", True) else None,
            columns=result.columns, row_count=result.row_count, size_bytes=size,
            sha256=result.sha256, path=location, stats=result.stats,
        )
        session.add(dataset)
        session.commit()
    except BaseException:
        storage().delete(location)
        raise
    return dataset


def _size(stream) -> int:
    """Return the upload's size: its end, not its position (reading Parquet leaves that anywhere)."""
    try:
        return stream.seek(0, os.SEEK_END)
    except (OSError, AttributeError):
        return request.content_length or 0


@bp.get("/datasets")
@spec("List datasets, newest first", query=DatasetListQuery, response=DatasetList)
def list_all():
    query = parse_query(DatasetListQuery)
    items = list_datasets(db_session(), tenant_id(), before_id=query.cursor, limit=query.limit)
    body = DatasetList(
        items=[DatasetOut.model_validate(d) for d in items],
        next_cursor=items[-1].id if len(items) == query.limit else None,
    )
    return jsonify(body.model_dump(mode="json"))


@bp.get("/datasets/<int:dataset_id>")
@spec("Get a dataset with its stats", response=DatasetOut)
def get_one(dataset_id: int):
    dataset = get_dataset(db_session(), tenant_id(), dataset_id)
    return jsonify(DatasetOut.model_validate(dataset).model_dump(mode="json"))


@bp.delete("/datasets/<int:dataset_id>")
@spec("Delete a dataset (refused while an unfinished job reads it)", status=204)
def delete_one(dataset_id: int):
    remove_dataset(dataset_id)
    return "", 204


def remove_dataset(dataset_id: int) -> Dataset:
    """Delete the tenant's dataset and its file, or raise Conflict while an unfinished job reads it
    (the dashboard's Delete button uses it too)."""
    session = db_session()
    dataset = delete_dataset(session, tenant_id(), dataset_id)
    session.commit()
    try:
        storage().delete(dataset.path)
    except StorageUnavailable as exc:  # the dataset is gone; only its file is left behind, unreferenced
        log.warning("dataset %s deleted; its file %s stays in storage: %s", dataset_id, dataset.path, exc.message)
    return dataset
