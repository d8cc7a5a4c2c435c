"""The model registry and evaluation results."""

from __future__ import annotations

from flask import Blueprint, jsonify

from api import db_session
from api.auth import tenant_id
from api.openapi import parse_query, spec
from api.schemas import EvaluationList, EvaluationListQuery, EvaluationOut, ModelList, ModelOut
from db.errors import NotFound
from db.services.registry import get_evaluation, list_evaluations, list_models

bp = Blueprint("models", __name__)


@bp.get("/models")
@spec("List registered models, newest first", response=ModelList)
def list_all():
    items = list_models(db_session(), tenant_id())
    return jsonify(ModelList(items=[ModelOut.model_validate(m) for m in items]).model_dump(mode="json"))


@bp.get("/models/<name>")
@spec("List the versions of a registered model, newest first", response=ModelList)
def get_by_name(name: str):
    items = list_models(db_session(), tenant_id(), name=name)
    if not items:
        raise NotFound(f"no model named '{name}'", code="model_not_found")
    return jsonify(ModelList(items=[ModelOut.model_validate(m) for m in items]).model_dump(mode="json"))


@bp.get("/evaluations")
@spec("List evaluations, newest first; filter by model (name or name:version) and dataset", query=EvaluationListQuery,
      response=EvaluationList)
def list_evaluations_view():
    query = parse_query(EvaluationListQuery)
    items = list_evaluations(db_session(), tenant_id(), model=query.model, dataset_id=query.dataset_id,
                             before_id=query.cursor, limit=query.limit)
    return jsonify(EvaluationList(items=[EvaluationOut.model_validate(e) for e in items],
                                  next_cursor=items[-1].id if len(items) == query.limit else None).model_dump(mode="json"))


@bp.get("/evaluations/<int:evaluation_id>")
@spec("Get an evaluation's metrics", response=EvaluationOut)
def get_evaluation_view(evaluation_id: int):
    evaluation = get_evaluation(db_session(), tenant_id(), evaluation_id)
    return jsonify(EvaluationOut.model_validate(evaluation).model_dump(mode="json"))
