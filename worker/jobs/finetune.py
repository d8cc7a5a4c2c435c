"""Fine-tune runner: datasets and base model in, a registered model and an evaluation out."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from db.services.registry import record_evaluation, register_model
from worker.jobs.common import dataset_file, headline_metrics, job_dir, load_dataset_row, resolve_model_path
from worker.lifecycle import Finalize, JobContext
from worker.ml.adapters import write_record


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
        train_path=dataset_file(context, train),
        validation_path=dataset_file(context, validation) if validation else None,
        columns=train.columns_by_role,
        output_dir=model_dir,
        checkpoint_dir=job_dir(context, "checkpoints"),
        hooks=context,
    )
    if params.lora is not None and not params.merge_adapter:
        # Pinned to the base's version: the adapter's weights are updates of that version's weights.
        base_ref = f"{base_artifact.name}:{base_artifact.version}" if base_artifact else params.base_model
        outcome["adapter"] = adapter_summary(write_record(model_dir, base_model=base_ref, base_path=base_path,
                                                          stats=outcome["train"]["lora"]))
        context.log(f"LoRA adapter of {base_ref} saved: {outcome['adapter']['adapter_bytes']:,} bytes, "
                    f"{outcome['adapter']['trainable_share']:.2%} of parameters trained")

    return register_trained(context, params, task=job.task, model_dir=model_dir, base_artifact=base_artifact,
                            train=train, validation=validation, outcome=outcome, label_names=outcome["label_names"])


def register_trained(context: JobContext, params, *, task: str, model_dir: Path, base_artifact, train, validation,
                     outcome: dict, label_names: list[str], extra: dict | None = None) -> Finalize:
    """Return the finalize step of a training job: register the model and record its evaluation.

    `outcome` holds the training's "metrics" (on the validation dataset, else on the held-out share of
    train) and "train" summary; `extra` goes into the job's result and the evaluation's metrics.
    """
    job = context.job
    adapter = outcome.get("adapter")  # a LoRA adapter's base, size and trainable share
    tokenizer = tokenizer_summary(model_dir)
    location = context.storage.publish(model_dir)  # stored before it is registered

    def finalize(session: Session) -> dict:
        artifact = register_model(
            session,
            tenant_id=job.tenant_id,
            name=params.model_name or f"job-{job.id}",
            task=task,
            base_model=adapter["base_model"] if adapter else (base_artifact.name if base_artifact else params.base_model),
            label_names=label_names,
            tokenizer=tokenizer,
            path=location,
            source_job_id=job.id,
            metrics=headline_metrics(outcome["metrics"]) | ({"adapter": adapter} if adapter else {}),
        )
        evaluation = record_evaluation(
            session,
            tenant_id=job.tenant_id,
            model_artifact_id=artifact.id,
            model_ref=f"{artifact.name}:{artifact.version}",
            dataset_id=validation.id if validation else train.id,
            job_id=job.id,
            split="validation" if validation else f"held-out {params.validation_fraction:.0%} of train",
            metrics=outcome["metrics"] | (extra or {}),
        )
        result = {
            "model": f"{artifact.name}:{artifact.version}",
            **(extra or {}),
            "evaluation_id": evaluation.id,
            "metrics": headline_metrics(outcome["metrics"]),
            "train": outcome["train"],
        } | ({"adapter": adapter} if adapter else {})
        return {"result": result, "model_artifact_id": artifact.id, "output_path": location}

    return finalize


def adapter_summary(record: dict) -> dict:
    """The adapter facts shown on a job's result and a model: base, size, trainable share."""
    return {key: record[key] for key in ("base_model", "adapter_bytes", "trainable_params", "total_params",
                                         "trainable_share", "r", "alpha", "target_modules", "head_modules")}


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

