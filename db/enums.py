"""The job status machine and the roles of API tokens."""

from __future__ import annotations

from enum import StrEnum


class TokenRole(StrEnum):
    """What a bearer token may do: a member reads and writes, a viewer only reads."""

    MEMBER = "member"
    VIEWER = "viewer"


class JobStatus(StrEnum):
    WAITING = "waiting"  # a pipeline step whose dependency has not succeeded yet: no message, no worker
    SCHEDULED = "scheduled"  # not before a time (or a run window): no message until then
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})

# running -> queued is a hand-back: lease expired, worker shut down, or a transient error.
# running -> running is a re-claim of an expired lease by a new attempt.
# waiting -> queued releases a pipeline step when the step it depends on succeeds; waiting -> cancelled
# when that step fails or is cancelled (or the user cancels it). scheduled -> queued when its start time
# comes (the sweeper), scheduled -> cancelled by the user.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.WAITING: frozenset({JobStatus.QUEUED, JobStatus.CANCELLED}),
    JobStatus.SCHEDULED: frozenset({JobStatus.QUEUED, JobStatus.CANCELLED}),
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset(
        {
            JobStatus.RUNNING,
            JobStatus.QUEUED,
            JobStatus.SCHEDULED,  # paused: its run window closed (pause_outside_window)
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.CANCELLED,
        }
    ),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


class IllegalTransition(ValueError):
    """A status change the transition table does not allow."""


def check_transition(current: JobStatus | str, new: JobStatus | str) -> None:
    """Raise `IllegalTransition` unless `current -> new` is in the table."""
    current, new = JobStatus(current), JobStatus(new)
    if new not in TRANSITIONS[current]:
        raise IllegalTransition(f"job cannot go from {current} to {new}")

