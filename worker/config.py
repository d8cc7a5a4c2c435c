"""Every setting Nightshift reads from the environment, in one place, with its default."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

ENV_PREFIX = "NIGHTSHIFT_"
JOB_KINDS = ("finetune", "evaluate", "batch_inference", "pretrain", "merge")
# Continued pre-training trains like a fine-tune: it shares the fine-tunes' queue and time limit; merging an
# adapter loads a model once, like an evaluation.
SETTINGS_KIND = {"pretrain": "finetune", "merge": "evaluate"}


def _env(name: str, default: str | None) -> str | None:
    return os.environ.get(ENV_PREFIX + name, default)


@dataclass(frozen=True)
class Settings:
    """Runtime settings; each field maps to `NIGHTSHIFT_<FIELD>` (upper case)."""

    data_dir: Path = field(default=Path(".nightshift"), metadata={"help": "Datasets, models, outputs, SQLite file."})
    database_url: str = field(default="", metadata={"help": "SQLAlchemy URL; default a SQLite file in data_dir."})
    storage_url: str = field(default="", metadata={"help": "Where datasets, checkpoints, models and outputs live for every host (an fsspec URL, e.g. s3://bucket/prefix); default: data_dir alone, for one machine or a shared disk."})
    storage_options: str = field(default="", metadata={"help": "JSON of the storage's fsspec options, e.g. {\"endpoint_url\": \"http://minio:9000\"} for an S3-compatible server (credentials also from AWS_* variables)."})
    redis_url: str = field(default="redis://127.0.0.1:6379/0", metadata={"help": "Broker; `up` starts an embedded one when unset."})
    api_host: str = field(default="127.0.0.1", metadata={"help": "Address the API binds to."})
    api_port: int = field(default=8080, metadata={"help": "Port the API binds to."})
    api_workers: int = field(default=2, metadata={"help": "gunicorn worker processes."})
    max_upload_bytes: int = field(default=1 << 30, metadata={"help": "Largest accepted upload (413 above)."})
    hub_enabled: bool = field(default=False, metadata={"help": "Allow model references that must be fetched from a hub."})
    # A dead host's job runs again within lease + sweep (+ a relay pass) seconds: 30 + 5 keeps that
    # under 45 s while a lease still survives five missed heartbeats (a stalled database, a long pause).
    lease_seconds: float = field(default=30.0, metadata={"help": "How long a job's lease lasts without a heartbeat."})
    heartbeat_seconds: float = field(default=5.0, metadata={"help": "Heartbeat period of a running job."})
    max_attempts: int = field(default=3, metadata={"help": "Attempts a job may use up: its process died, or it raised a transient error."})
    run_windows: str = field(default="nightly=22:00-06:00", metadata={"help": "Named run windows a job's not_before may name: name=HH:MM-HH:MM (or HH:MM:SS), comma-separated, in NIGHTSHIFT_TIMEZONE (an end before the start runs past midnight)."})
    timezone: str = field(default="UTC", metadata={"help": "Time zone of the run windows (an IANA name, e.g. Europe/Paris)."})
    max_running_per_tenant: int = field(default=0, metadata={"help": "Jobs one tenant may run at once across all workers; its other jobs wait in line (0: no cap)."})
    max_interruptions: int = field(default=20, metadata={"help": "Attempts ended by a lost worker or host (not the job's fault) before the job fails."})
    retry_backoff_seconds: float = field(default=10.0, metadata={"help": "First retry delay; doubles per attempt."})
    sweep_seconds: float = field(default=5.0, metadata={"help": "Sweeper period (in beat)."})
    relay_seconds: float = field(default=2.0, metadata={"help": "Outbox relay period (in beat)."})
    redispatch_after_seconds: float = field(default=30.0, metadata={"help": "Re-send a queued job's message if the broker lost it this long after sending."})
    queue_finetune: str = field(default="gpu", metadata={"help": "Celery queue of fine-tunes (and pretrain jobs)."})
    queue_evaluate: str = field(default="gpu", metadata={"help": "Celery queue of evaluations (and adapter merges)."})
    queue_batch_inference: str = field(default="gpu", metadata={"help": "Celery queue of batch inference."})
    time_limit_finetune: int = field(default=12 * 3600, metadata={"help": "Soft time limit (s) of a fine-tune (or pretrain) attempt: checkpoint, then fail with time_limit."})
    time_limit_evaluate: int = field(default=2 * 3600, metadata={"help": "Soft time limit (s) of an evaluation (or merge) attempt."})
    time_limit_batch_inference: int = field(default=12 * 3600, metadata={"help": "Soft time limit (s) of a batch-inference attempt."})
    time_limit_grace_seconds: int = field(default=600, metadata={"help": "Hard limit = soft limit + this; then the process is killed."})
    visibility_timeout_seconds: int = field(default=13 * 3600, metadata={"help": "Redis transport visibility timeout."})
    unacked_restore_seconds: int = field(default=0, metadata={"help": "How often workers re-queue unacknowledged messages past the visibility timeout (0: the transport's default)."})
    preload_ml: bool = field(default=True, metadata={"help": "Workers import torch, transformers and the task modules once, before forking job processes, so no job pays their import time."})
    worker_concurrency: int = field(default=1, metadata={"help": "Processes per worker; pool process i gets GPU i of the visible ones (set one per GPU)."})
    task_events: bool = field(default=False, metadata={"help": "Workers send Celery task events (for Flower's live task view; Flower also turns them on when it starts)."})
    metrics_token: str = field(default="", metadata={"help": "If set, GET /metrics requires `Authorization: Bearer <this>` (Prometheus' `authorization` setting); default: open, like /api/v1/healthz."})
    secret_key: str = field(default="", metadata={"help": "Signs the dashboard's session cookies; default: a random key kept in data_dir/secret_key (set the same value on every API host)."})
    token: str = field(default="", metadata={"help": "Bearer token the CLI sends."})
    api_url: str = field(default="", metadata={"help": "API base URL the CLI calls; default from host and port."})
    config: str = field(default="", metadata={"help": "The CLI's TOML file of `url` and `token`; default ~/.config/nightshift/config.toml."})

    @classmethod
    def from_env(cls, **overrides: Any) -> "Settings":
        """Read `NIGHTSHIFT_*` variables, then apply `overrides`."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = _env(f.name.upper(), None)
            if raw is not None:
                values[f.name] = _coerce(raw, type(f.default))
        settings = cls(**values)
        return settings.with_overrides(**overrides)

    def with_overrides(self, **overrides: Any) -> "Settings":
        """Return a copy with fields replaced (strings coerced to the field's type)."""
        known = {f.name: type(f.default) for f in fields(self)}
        clean = {k: _coerce(v, known[k]) if isinstance(v, str) else v for k, v in overrides.items() if k in known}
        settings = replace(self, **clean)
        if not settings.database_url:
            db_file = (Path(settings.data_dir) / "nightshift.db").resolve()
            settings = replace(settings, database_url=f"sqlite:///{db_file}")
        return replace(settings, data_dir=Path(settings.data_dir))

    def time_limit_for(self, kind: str) -> int:
        """Return the soft time limit in seconds of one attempt of a `kind` job."""
        return getattr(self, f"time_limit_{SETTINGS_KIND.get(kind, kind)}")

    def hard_time_limit_for(self, kind: str) -> int:
        """Return the hard time limit in seconds, after which Celery kills the process."""
        return self.time_limit_for(kind) + self.time_limit_grace_seconds

    def queue_for(self, kind: str) -> str:
        """Return the Celery queue that runs jobs of `kind`."""
        return getattr(self, f"queue_{SETTINGS_KIND.get(kind, kind)}")

    @property
    def worker_stale_seconds(self) -> float:
        """How long since its last heartbeat a worker counts as alive: three heartbeats."""
        return 3 * self.heartbeat_seconds

    @property
    def base_url(self) -> str:
        return self.api_url or f"http://{self.api_host}:{self.api_port}"

    def export_env(self) -> dict[str, str]:
        """Return the settings as environment variables for child processes."""
        return {ENV_PREFIX + f.name.upper(): _render(getattr(self, f.name)) for f in fields(self)}


def _coerce(raw: str, kind: type) -> Any:
    if kind is bool:
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    if kind is Path:
        return Path(raw)
    return kind(raw)


def _render(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def describe() -> list[tuple[str, str, str]]:
    """Return (variable, default, help) rows for the README's configuration table."""
    return [(ENV_PREFIX + f.name.upper(), _render(f.default), f.metadata.get("help", "")) for f in fields(Settings)]
