"""Helpers shared by the job runners: model references, dataset files, storage paths."""

from __future__ import annotations

from pathlib import Path

from db.models import Dataset, ModelArtifact
from db.services.registry import resolve_model
from worker.catalog import ModelRefError, resolve_unregistered
from worker.errors import PermanentJobError
from worker.lifecycle import JobContext
from worker.ml import adapters


def load_dataset_row(context: JobContext, dataset_id: int) -> Dataset:
    """Return the dataset row a job reads, failing clearly if it is gone."""
    with context.session_factory() as session:
        dataset = session.get(Dataset, dataset_id)
    if dataset is None or dataset.deleted_at is not None or dataset.tenant_id != context.job.tenant_id:
        raise PermanentJobError(f"dataset {dataset_id} no longer exists", code="dataset_missing")
    if not context.storage.exists(dataset.path):
        raise PermanentJobError(f"the file of dataset {dataset_id} is missing from storage", code="dataset_missing")
    return dataset


def dataset_file(context: JobContext, dataset: Dataset) -> Path:
    """Return the local path of a dataset's file, fetched from storage if this host lacks it."""
    return context.storage.fetch(dataset.path)


def fetch_model(context: JobContext, artifact: ModelArtifact) -> str:
    """Return the local directory of a registered model, fetched from storage if this host lacks it."""
    try:
        return str(context.storage.fetch(artifact.path))
    except FileNotFoundError:
        raise PermanentJobError(f"the files of model {artifact.name}:{artifact.version} are missing from storage "
                                f"({artifact.path}); register it again", code="model_missing") from None


def resolve_model_path(context: JobContext, ref: str) -> tuple[str, ModelArtifact | None]:
    """Turn a model reference into something `from_pretrained` loads, plus its registry row."""
    with context.session_factory() as session:
        artifact = resolve_model(session, context.job.tenant_id, ref)
        path = fetch_model(context, artifact) if artifact is not None else None
        base = _adapter_base(session, context, artifact, path) if artifact is not None else None
    if base is not None:
        adapters.use_base(path, base)
    if artifact is not None:
        return path, artifact
    try:
        return resolve_unregistered(ref, hub_enabled=context.settings.hub_enabled), None
    except ModelRefError as exc:
        raise PermanentJobError(exc.message, code=exc.code) from None


def _adapter_base(session, context: JobContext, artifact: ModelArtifact, path: str) -> str | None:
    """Return the path of a LoRA adapter's base model, resolved through the registry (None: not an adapter)."""
    if not adapters.is_adapter(path):
        return None
    ref = adapters.adapter_record(path).get("base_model") or artifact.base_model
    base = resolve_model(session, context.job.tenant_id, ref)
    if base is not None:
        return fetch_model(context, base)
    try:
        return resolve_unregistered(ref, hub_enabled=context.settings.hub_enabled)
    except ModelRefError:
        raise PermanentJobError(f"model {artifact.name}:{artifact.version} is a LoRA adapter of '{ref}', which is no "
                                "longer registered: register that base again", code="model_not_found") from None


def job_dir(context: JobContext, area: str) -> Path:
    """Return (and create) this job's directory under `area` of the data dir."""
    path = Path(context.settings.data_dir).resolve() / area / f"job-{context.job.id}"
    path.mkdir(parents=True, exist_ok=True)
    return path


# The few numbers of each task's metrics shown on a job and a model (each task has some of them).
HEADLINE_METRICS = ("accuracy", "subset_accuracy", "precision_macro", "recall_macro", "f1_macro", "f1_micro",
                    "f1_weighted", "precision", "recall", "f1", "bleu", "chrf", "rouge1", "rouge2", "rougeL",
                    "loss", "perplexity", "exact_match", "support")


def headline_metrics(metrics: dict) -> dict:
    """Pick the few metrics shown on a job and a model."""
    return {k: metrics[k] for k in HEADLINE_METRICS if k in metrics}
