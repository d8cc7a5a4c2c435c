"""Fine-tune runner: datasets and base model in, a registered model and an evaluation out."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from db.services.registry import record_evaluation, register_model
from worker.jobs.common import headline_metrics, job_dir, load_dataset_row, resolve_model_path
from worker.lifecycle import Finalize, JobContext


def run(context: JobContext) -> Finalize:
    """Train the job's model and return the step that registers it."""
    from worker.ml.tasks import get_task, params_model

    job = context.job
    params = params_model(job.task, "finetune").model_validate(job.params)
    train = load_dataset_row(context, params.train_dataset_id)
    validation = (
        load_dataset_row(context, params.validation_dataset_id) if params.validation_dataset_id else None
    )
    base_path, base_artifact = resolve_model_path(context, params.base_model)
    model_dir = job_dir(context, "models")
    context.log(f"fine-tuning {params.base_model} on dataset {train.id} ({train.row_count} rows)")
    outcome = get_task(job.task).finetune(
        params,
        base_model=base_path,
        train_path=Path(train.path),
        validation_path=Path(validation.path) if validation else None,
        columns=train.columns_by_role,
        output_dir=model_dir,
        checkpoint_dir=job_dir(context, "checkpoints"),
        hooks=context,
    )

    def finalize(session: Session) -> dict:
        artifact = register_model(
            session,
            tenant_id=job.tenant_id,
            name=params.model_name or f"job-{job.id}",
            task=job.task,
            base_model=base_artifact.name if base_artifact else params.base_model,
            label_names=outcome["label_names"],
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
            metrics=outcome["metrics"],
        )
        result = {
            "model": f"{artifact.name}:{artifact.version}",
            "evaluation_id": evaluation.id,
            "metrics": headline_metrics(outcome["metrics"]),
            "train": outcome["train"],
        }
        return {"result": result, "model_artifact_id": artifact.id, "output_path": str(model_dir)}

    return finalize


def tokenizer_summary(model_dir: Path) -> dict:
    """Describe the tokenizer saved beside a trained model, from its files."""
    import json

    summary: dict = {}
    config = model_dir / "tokenizer_config.json"
    if config.is_file():
        values = json.loads(config.read_text())
        summary = {key: values[key] for key in ("tokenizer_class", "model_max_length", "do_lower_case") if key in values}
    vocabulary = model_dir / "tokenizer.json"
    if vocabulary.is_file():
        model = json.loads(vocabulary.read_text()).get("model", {})
        summary |= {"type": model.get("type"), "vocab_size": len(model.get("vocab") or ())}
    return summary

