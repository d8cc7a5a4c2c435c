"""The dashboard's model pages: the registry grouped by name with each version's metrics, and two
models' evaluations on one dataset side by side."""

from __future__ import annotations

from flask import abort, g, render_template, request

from api import db_session
from api.dashboard import bp
from db.errors import ServiceError
from db.models import Evaluation, ModelArtifact
from db.services.datasets import get_dataset, list_datasets
from db.services.registry import list_evaluations, list_models, resolve_model
from worker.jobs.common import HEADLINE_METRICS

METRIC_COLUMNS = tuple(name for name in HEADLINE_METRICS if name != "support")
LOWER_IS_BETTER = frozenset({"loss", "perplexity"})
PICKER_DATASETS = 200  # datasets offered in the compare form's menu


@bp.get("/models")
def models():
    groups: dict[str, list[ModelArtifact]] = {}
    for model in list_models(db_session(), g.tenant_id):  # newest first, so groups are too
        groups.setdefault(model.name, []).append(model)
    return render_template("models.html", groups={name: (versions, _columns(m.metrics for m in versions))
                                                  for name, versions in groups.items()})


@bp.get("/models/<name>")
def model(name: str):
    versions = list_models(db_session(), g.tenant_id, name=name)
    if not versions:
        abort(404, f"no model named '{name}'")
    evaluations = list_evaluations(db_session(), g.tenant_id, model=name, limit=100)
    return render_template("model.html", name=name, versions=versions,
                           metric_names=_columns(m.metrics for m in versions),
                           evaluations=evaluations, eval_names=_columns(e.metrics for e in evaluations))


@bp.get("/models/compare")
def compare():
    refs = {side: request.args.get(side, "").strip() for side in ("a", "b")}
    dataset_id = request.args.get("dataset", type=int)
    page = {"refs": refs, "dataset_id": dataset_id,
            "names": sorted({m.name for m in list_models(db_session(), g.tenant_id)}),
            "datasets": list_datasets(db_session(), g.tenant_id, limit=PICKER_DATASETS)}
    if not (refs["a"] and refs["b"] and dataset_id):
        return render_template("compare.html", **page)
    try:
        dataset = get_dataset(db_session(), g.tenant_id, dataset_id)
    except ServiceError as exc:
        return render_template("compare.html", **page, problems=[exc.message]), 404
    sides, problems = {}, []
    for side, ref in refs.items():
        artifact = resolve_model(db_session(), g.tenant_id, ref)
        if artifact is None:
            problems.append(f"no registered model '{ref}'")
            continue
        found = list_evaluations(db_session(), g.tenant_id, model=f"{artifact.name}:{artifact.version}",
                                 dataset_id=dataset.id, limit=1)
        sides[side] = (artifact, found[0] if found else None)
    if problems:
        return render_template("compare.html", **page, dataset=dataset, problems=problems), 404
    missing = [artifact for artifact, evaluation in sides.values() if evaluation is None]
    return render_template("compare.html", **page, dataset=dataset, sides=sides, missing=missing, **_comparison(sides))


def _columns(metric_dicts) -> list[str]:
    """The headline metrics any of `metric_dicts` has, in the usual order."""
    present = set()
    for metrics in metric_dicts:
        present.update(name for name, value in (metrics or {}).items() if _is_number(value))
    return [name for name in METRIC_COLUMNS if name in present]


def _comparison(sides: dict[str, tuple[ModelArtifact, Evaluation | None]]) -> dict:
    """Headline metrics and per-class F1 of both evaluations with their differences (b - a)."""
    a, b = sides["a"][1], sides["b"][1]
    if a is None or b is None:
        return {"rows": [], "per_class": []}
    rows = [(name, a.metrics.get(name), b.metrics.get(name), _difference(a.metrics.get(name), b.metrics.get(name)),
             name in LOWER_IS_BETTER) for name in _columns([a.metrics, b.metrics])]
    per_a = a.metrics.get("per_class") or a.metrics.get("per_type") or {}
    per_b = b.metrics.get("per_class") or b.metrics.get("per_type") or {}
    per_class = []
    if per_a and per_b:
        for label in dict.fromkeys([*per_a, *per_b]):
            f1_a, f1_b = (per_a.get(label) or {}).get("f1"), (per_b.get(label) or {}).get("f1")
            per_class.append((label, f1_a, f1_b, _difference(f1_a, f1_b)))
    return {"rows": rows, "per_class": per_class}


def _difference(a, b) -> float | None:
    return b - a if _is_number(a) and _is_number(b) else None


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
