"""The dashboard's new-job form: one form per job kind and task, built from that pair's parameter model.

The fields, their types, defaults and help text come from the same pydantic models that validate
`POST /api/v1/jobs` (and document it in OpenAPI), and the form submits through the same function
as the API, so the checks and their messages are the API's; each message is shown next to the
field it names.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from flask import flash, g, redirect, render_template, request, url_for
from pydantic import BaseModel, ValidationError

from api import db_session
from api.dashboard import bp, writer
from api.schemas import JOB_KINDS, JobIn
from db.errors import ServiceError
from db.services.datasets import list_datasets
from db.services.registry import list_models
from worker.ml.tasks import params_model, tasks_of


@dataclass
class FormField:
    """One input of the form: `widget` is select, checkbox, number, json, dataset or text."""

    name: str
    widget: str
    required: bool
    default: Any
    help: str
    choices: tuple = ()


@bp.route("/jobs/new", methods=["GET", "POST"])
@writer
def new_job():
    kind = request.values.get("kind") if request.values.get("kind") in JOB_KINDS else "finetune"
    tasks = tasks_of(kind)
    task = request.values.get("task") if request.values.get("task") in tasks else tasks[0]
    fields = form_fields(params_model(task, kind))
    values = {f.name: ("" if f.default is None else _shown(f.default)) for f in fields}
    values["priority"] = "5"
    errors: dict[str, str] = {}
    if request.method == "POST" and request.form.get("action") == "submit":
        values = {f.name: request.form.get(f.name, "") for f in fields} | {"priority": request.form.get("priority", "5")}
        params, errors = _params_from_form(fields)
        if not errors:
            try:
                submission = JobIn.model_validate({"kind": kind, "task": task, "params": params,
                                                   "priority": values["priority"] or 5}).root
                from api.jobs import create_submission

                job, _created, _answer = create_submission(submission)
                flash(f"Job {job.id} queued.", "info")
                return redirect(url_for("dashboard.job", job_id=job.id))
            except ValidationError as exc:
                errors = _validation_errors(exc)
            except ServiceError as exc:
                field = str((exc.details or {}).get("field", "")).removeprefix("params.")
                errors = {field if field in values else "": exc.message}
    datasets = list_datasets(db_session(), g.tenant_id, limit=200)
    models = sorted({m.name for m in list_models(db_session(), g.tenant_id)})
    return render_template("new_job.html", kind=kind, task=task, kinds=JOB_KINDS, tasks=tasks, fields=fields,
                           values=values, errors=errors, datasets=datasets, models=models), 422 if errors else 200


def form_fields(model: type[BaseModel]) -> list[FormField]:
    """Describe the inputs of a parameter model, in its field order."""
    fields = []
    for name, info in model.model_fields.items():
        annotation = _unwrap_annotated(_unwrap_optional(info.annotation))
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            default = default.model_dump(mode="json")
        if typing.get_origin(annotation) is Literal:
            widget, choices = "select", typing.get_args(annotation)
        elif annotation is bool:
            widget, choices = "checkbox", ()
        elif annotation in (int, float):
            widget, choices = ("dataset" if name.endswith("dataset_id") else "number"), ()
        elif annotation is str or _scalar_union(annotation):  # e.g. a threshold: a number or "tune"
            widget, choices = "text", ()
        else:  # nested options, lists, dicts
            widget, choices = "json", ()
        fields.append(FormField(name, widget, info.is_required(), default, info.description or "", choices))
    return fields


def _scalar_union(annotation) -> bool:
    """Say whether `annotation` is a union of numbers, strings and literals (typed as text, checked by pydantic)."""
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return False
    return all(typing.get_origin(_unwrap_annotated(member)) is Literal or _unwrap_annotated(member) in (int, float, str)
               for member in typing.get_args(annotation))


def _unwrap_annotated(annotation):
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is typing.Annotated else annotation


def _unwrap_optional(annotation):
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _shown(value: Any) -> str:
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def _params_from_form(fields: list[FormField]) -> tuple[dict[str, Any], dict[str, str]]:
    """Read the posted values: an empty field takes its default; JSON fields must parse."""
    params: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for field in fields:
        if field.widget == "checkbox":
            params[field.name] = field.name in request.form
            continue
        raw = request.form.get(field.name, "").strip()
        if not raw:
            continue
        if field.widget == "json":
            try:
                params[field.name] = json.loads(raw)
            except ValueError as exc:
                errors[field.name] = f"not valid JSON: {exc}"
        else:
            params[field.name] = raw  # pydantic converts numbers and checks choices, as for the API
    return params, errors


def _validation_errors(exc: ValidationError) -> dict[str, str]:
    """Map pydantic's errors to form fields (the part of the location after `params`)."""
    errors: dict[str, str] = {}
    for error in exc.errors(include_url=False):
        location = [str(part) for part in error["loc"]]
        field = location[location.index("params") + 1] if "params" in location[:-1] else (
            "priority" if "priority" in location else "")
        errors.setdefault(field, error["msg"])
    return errors
