"""Pretrain runner: unlabelled text and a base model in, a registered base model and its perplexity out."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from db.services.registry import record_evaluation, register_model
from worker.jobs.common import headline_metrics, job_dir, load_dataset_row, resolve_model_path
from worker.jobs.finetune import tokenizer_summary
from worker.lifecycle import Finalize, JobContext


def run(context: JobContext) -> Finalize:
    """Continue the base model's pre-training and return the step that registers it (task language-modeling)."""
    from worker.ml.pretrain import pretrain
    from worker.ml.tasks import LANGUAGE_MODELING
    from worker.params import PretrainParams

    job = context.job
    params = PretrainParams.model_validate(job.params)
    train = load_dataset_row(context, params.train_dataset_id)
    validation = load_dataset_row(context, params.validation_dataset_id) if params.validation_dataset_id else None
    base_path, base_artifact = resolve_model_path(context, params.base_model)
    model_dir = job_dir(context, "models")
    context.log(f"pre-training {params.base_model} on dataset {train.id} ({train.row_count} rows)")
    outcome = pretrain(
        params,
        base_model=base_path,
        train_path=Path(train.path),
        validation_path=Path(validation.path) if validation else None,
        text_column=_text_column(params, train),
        validation_column=_text_column(params, validation) if validation else None,
        output_dir=model_dir,
        checkpoint_dir=job_dir(context, "checkpoints"),
        hooks=context,
    )

    def finalize(session: Session) -> dict:
        artifact = register_model(
            session,
            tenant_id=job.tenant_id,
            name=params.model_name or f"job-{job.id}",
            task=LANGUAGE_MODELING,
            base_model=base_artifact.name if base_artifact else params.base_model,
            label_names=[],
            tokenizer=tokenizer_summary(model_dir),
            path=str(model_dir),
            source_job_id=job.id,
            metrics=headline_metrics(outcome["metrics"]),
        )
        evaluation = record_evaluation(
            session,
            tenant_id=job.tenant_id,
            model_artifact_id=artifact.id,
            model_ref=f"{artifact.name}:{artifact.version}",
            dataset_id=validation.id if validation else train.id,
            job_id=job.id,
            split="validation" if validation else f"held-out {params.validation_fraction:.0%} of train",
            metrics=outcome["metrics"] | {"objective": outcome["objective"]},
        )
        result = {
            "model": f"{artifact.name}:{artifact.version}",
            "objective": outcome["objective"],
            "evaluation_id": evaluation.id,
            "metrics": headline_metrics(outcome["metrics"]),
            "train": outcome["train"],
        }
        return {"result": result, "model_artifact_id": artifact.id, "output_path": str(model_dir)}

    return finalize


def _text_column(params, dataset) -> str:
    """The column pre-trained on: the job's choice, else the dataset's text role."""
    return params.text_column or dataset.columns_by_role.get("text", dataset.text_column)
