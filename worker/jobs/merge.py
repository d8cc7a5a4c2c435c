"""Merge runner: a registered LoRA adapter in, its base model with the adapter folded in registered as a full model."""

from __future__ import annotations

from sqlalchemy.orm import Session

from db.services.registry import register_model
from worker.errors import PermanentJobError
from worker.jobs.common import job_dir, resolve_model_path
from worker.jobs.finetune import tokenizer_summary
from worker.lifecycle import Finalize, JobContext
from worker.ml import adapters


def run(context: JobContext) -> Finalize:
    """Write the merged model and return the step that registers it beside the adapter's lineage."""
    from worker.ml.tasks import get_task
    from worker.params import MergeParams

    job = context.job
    params = MergeParams.model_validate(job.params)
    path, artifact = resolve_model_path(context, params.model)
    if artifact is None or not adapters.adapter_record(path):
        raise PermanentJobError(f"model '{params.model}' is not a registered LoRA adapter; a merge folds a fine-tune's "
                                "adapter (lora) into its base model", code="not_an_adapter")
    source = f"{artifact.name}:{artifact.version}"
    record = adapters.adapter_record(path)
    context.log(f"merging LoRA adapter {source} (r={record.get('r')}) into its base {artifact.base_model}")
    context.progress(fraction=0.0, stage="merging")
    model_dir = job_dir(context, "models")
    size = adapters.merge_to(path, get_task(job.task).MODEL_CLASS, model_dir)
    context.log(f"merged model written: {size:,} bytes of weights (the adapter: {record.get('adapter_bytes', 0):,})")
    tokenizer = tokenizer_summary(model_dir)
    location = context.storage.publish(model_dir)  # stored before it is registered

    def finalize(session: Session) -> dict:
        merged = register_model(
            session, tenant_id=job.tenant_id, name=params.model_name or f"{artifact.name}-merged", task=artifact.task,
            base_model=artifact.base_model, label_names=artifact.label_names, tokenizer=tokenizer,
            path=location, source_job_id=job.id,
            # The same function as the adapter's: its evaluation holds for the merged weights.
            metrics={key: value for key, value in artifact.metrics.items() if key != "adapter"} | {"merged_from": source},
        )
        result = {"model": f"{merged.name}:{merged.version}", "merged_from": source, "base_model": artifact.base_model,
                  "model_bytes": size, "adapter_bytes": record.get("adapter_bytes")}
        return {"result": result, "model_artifact_id": merged.id, "output_path": location}

    return finalize
