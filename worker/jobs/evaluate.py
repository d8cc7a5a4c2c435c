"""Evaluate runner: a model and a labelled dataset in, an `Evaluation` out."""

from __future__ import annotations

from sqlalchemy.orm import Session

from db.services.registry import record_evaluation
from worker.errors import PermanentJobError
from worker.jobs.common import dataset_file, headline_metrics, load_dataset_row, resolve_model_path
from worker.lifecycle import Finalize, JobContext


def run(context: JobContext) -> Finalize:
    """Score the model on the dataset and return the step that stores the evaluation."""
    from worker.ml.tasks import get_task, params_model

    job = context.job
    params = params_model(job.task, "evaluate").model_validate(job.params)
    dataset = load_dataset_row(context, params.dataset_id)
    if not dataset.label_column:
        raise PermanentJobError(
            f"dataset {dataset.id} has no label column; upload it with label_column=... to evaluate on it",
            code="dataset_unlabelled",
        )
    model_path, artifact = resolve_model_path(context, params.model)
    metrics = get_task(job.task).evaluate(
        model_path,
        data_path=dataset_file(context, dataset),
        columns=dataset.columns_by_role,
        params=params,
        hooks=context,
    )

    def finalize(session: Session) -> dict:
        evaluation = record_evaluation(
            session,
            tenant_id=job.tenant_id,
            model_artifact_id=artifact.id if artifact else None,
            model_ref=f"{artifact.name}:{artifact.version}" if artifact else params.model,
            dataset_id=dataset.id,
            job_id=job.id,
            split="full dataset",
            metrics=metrics,
        )
        return {"result": {"evaluation_id": evaluation.id, "metrics": headline_metrics(metrics)}}

    return finalize
