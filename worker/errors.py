"""Errors a job can end with; the worker maps each to a job status."""

from __future__ import annotations


class JobError(Exception):
    """Root of every error a job runner raises on purpose."""

    code = "job_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class PermanentJobError(JobError):
    """Fail the job now; the message is shown to the user as the reason."""

    code = "job_failed"


class TransientJobError(JobError):
    """Give the job back so that another attempt runs it after a backoff."""

    code = "transient"


class JobInterrupted(JobError):
    """Stop running: the job was cancelled or this attempt lost its lease."""

    code = "interrupted"
