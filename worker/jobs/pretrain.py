"""Pretrain runner: unlabelled text and a base model in, a registered base model and its perplexity out."""

from __future__ import annotations

from worker.jobs.common import dataset_file, job_dir, load_dataset_row, resolve_model_path
from worker.jobs.finetune import register_trained
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
        train_path=dataset_file(context, train),
        validation_path=dataset_file(context, validation) if validation else None,
        text_column=_text_column(params, train),
        validation_column=_text_column(params, validation) if validation else None,
        output_dir=model_dir,
        checkpoint_dir=job_dir(context, "checkpoints"),
        hooks=context,
    )

    return register_trained(context, params, task=LANGUAGE_MODELING, model_dir=model_dir, base_artifact=base_artifact,
                            train=train, validation=validation, outcome=outcome, label_names=[],
                            extra={"objective": outcome["objective"]})


def _text_column(params, dataset) -> str:
    """The column pre-trained on: the job's choice, else the dataset's text role."""
    return params.text_column or dataset.columns_by_role.get("text", dataset.text_column)
