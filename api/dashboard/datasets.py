"""The dashboard's dataset pages: the list with the upload form, a dataset's page and its Delete button."""

from __future__ import annotations

from flask import abort, flash, g, redirect, render_template, request, url_for
from werkzeug.datastructures import MultiDict

from api import db_session
from api.dashboard import bp, writer
from db.errors import InvalidInput, ServiceError
from db.services.datasets import get_dataset, jobs_using, list_datasets
from worker.datafiles import FORMATS
from worker.ml.tasks import TASKS, get_task

PAGE_SIZE = 50
TOP_LABELS = 40  # bars in the label chart; the rest are summed into "other"
# The column fields of the upload form: text and label first (text classification, plain text), then
# every other task's roles in the order its module lists them.
ROLE_FIELDS = tuple(dict.fromkeys(["text", "label", *(role for task in TASKS for role in get_task(task).ROLES)]))
# Upload options of a task's own (multi-label's label_separator), by task.
TASK_OPTIONS = {task: dict(getattr(get_task(task), "UPLOAD_OPTIONS", {})) for task in TASKS}
FORM_FIELDS = {"file", "target_file", "name", "task", "format", *(f"{role}_column" for role in ROLE_FIELDS),
               *(name for options in TASK_OPTIONS.values() for name in options)}
# Errors about the file's content, which the message places by row and column.
FILE_ERRORS = ("file_missing", "empty_file", "not_utf8", "bad_column_name", "bad_label")


@bp.get("/datasets")
def datasets():
    return _datasets_page(MultiDict(), {})


@bp.post("/datasets")
@writer
def upload():
    from api.datasets import store_upload

    files = {key: value for key, value in request.files.items() if value.filename}  # a browser sends empty inputs
    form = MultiDict((key, value) for key, value in request.form.items() if key != "csrf_token")
    try:
        dataset = store_upload(files, form)
    except InvalidInput as exc:
        return _datasets_page(form, {_field_of(exc, form): exc.message}), 422
    flash(f"Dataset {dataset.id} ({dataset.name}): {dataset.row_count} rows stored.", "info")
    return redirect(url_for("dashboard.dataset", dataset_id=dataset.id))


def _datasets_page(form: MultiDict, errors: dict[str | None, str]):
    cursor = request.args.get("cursor", type=int)
    rows = list_datasets(db_session(), g.tenant_id, before_id=cursor if cursor and cursor > 0 else None,
                         limit=PAGE_SIZE + 1)
    return render_template("datasets.html", datasets=rows[:PAGE_SIZE], cursor=cursor,
                           next_cursor=rows[PAGE_SIZE - 1].id if len(rows) > PAGE_SIZE else None,
                           form=form, errors=errors, more_open=_other_roles_used(form, errors), tasks=TASKS,
                           formats=FORMATS, role_fields=ROLE_FIELDS,
                           task_roles={task: list(get_task(task).ROLES) for task in TASKS}, task_options=TASK_OPTIONS)


def _other_roles_used(form: MultiDict, errors: dict[str | None, str]) -> bool:
    """Whether the form's other-task columns should start unfolded: one is filled in or has an error."""
    others = {f"{role}_column" for role in ROLE_FIELDS[2:]} | {"target_file"} | {
        name for options in TASK_OPTIONS.values() for name in options}
    return any(form.get(field) for field in others) or bool(others & set(errors))


def _field_of(exc: InvalidInput, form: MultiDict) -> str | None:
    """Name the form field an upload error concerns (None: the form as a whole)."""
    details = exc.details if isinstance(exc.details, dict) else {}
    for key in ("field", "role"):  # `role` of a missing column is its form field, e.g. label_column
        if details.get(key) in FORM_FIELDS:
            return details[key]
    if exc.code == "unsupported_format":
        return "format" if form.get("format") else "file"
    if exc.code == "target_file_unexpected":
        return "target_file"
    if exc.code in FILE_ERRORS or exc.code.startswith("malformed_") or "row" in details:
        return "file"
    return None


@bp.get("/datasets/<int:dataset_id>")
def dataset(dataset_id: int):
    found = _dataset_or_404(dataset_id)
    return render_template("dataset.html", dataset=found, jobs=jobs_using(db_session(), g.tenant_id, dataset_id),
                           charts=_charts(found.stats or {}, found.task))


@bp.post("/datasets/<int:dataset_id>/delete")
@writer
def delete_dataset(dataset_id: int):
    from api.datasets import remove_dataset

    found = _dataset_or_404(dataset_id)
    try:
        remove_dataset(dataset_id)
    except ServiceError as exc:
        flash(exc.message, "error")
        return redirect(url_for("dashboard.dataset", dataset_id=dataset_id))
    flash(f"Dataset {dataset_id} ({found.name}) deleted.", "info")
    return redirect(url_for("dashboard.datasets"))


def _dataset_or_404(dataset_id: int):
    try:
        return get_dataset(db_session(), g.tenant_id, dataset_id)
    except ServiceError:
        abort(404, f"dataset {dataset_id} not found")


def _charts(stats: dict, task: str | None) -> dict:
    """The chart data in a dataset's stats: label (or tag) and entity counts, and a histogram of each
    length kept at upload (worker.datafiles.length_summary); datasets stored before histograms were
    kept show their min, percentiles, max and mean instead."""
    counts = {}
    labels = "Tags" if task == "token-classification" else "Labels"
    for key, title in (("label_distribution", labels), ("entity_counts", "Entities")):
        if isinstance(stats.get(key), dict) and stats[key]:
            counts[title] = _top(stats[key])
    lengths = {key.replace("_length_chars", " length (characters)").replace("_", " "):
               value.get("histogram") or
               {point: value[point] for point in ("min", "p50", "p90", "p99", "max", "mean") if point in value}
               for key, value in stats.items()
               if (key.endswith("_length_chars") or key.endswith("_per_row")) and isinstance(value, dict)}
    return {"counts": counts, "lengths": lengths}


def _top(counts: dict[str, int]) -> dict[str, int]:
    ranked = sorted(counts.items(), key=lambda item: -item[1])
    top = dict(ranked[:TOP_LABELS])
    rest = sum(count for _label, count in ranked[TOP_LABELS:])
    return top | ({"(other)": rest} if rest else {})
