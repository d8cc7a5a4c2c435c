"""Lines of queued jobs: how many wait ahead of a job, and their estimates, without counting them one by one.

A line is the queued jobs of one queue, kind and priority; triggers on jobs (migration 0012) write a
`QueueLineChange` row for every job that joins or leaves one. A job's place is the jobs of the higher
priorities of its queue and kind (their lines' sums) plus those of its own priority that are older: the
shorter side of it is counted (the jobs ahead near the front, or the jobs behind a new one, subtracted
from its line's sum), so the cost stays flat however long the line grows. The maintenance loop folds the
change rows into one row per line (`compact`).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, bindparam, delete, func, insert, select
from sqlalchemy.orm import Session

from db.enums import JobStatus
from db.models import Job, QueueLineChange

PROBE = 64  # jobs of its own priority counted on each side of a job, at most, before the line's sums are used


@dataclass(frozen=True)
class Ahead:
    """The queued jobs ahead of a job in line: how many, their estimates' sum, how many have no estimate."""

    jobs: int
    seconds: float
    unknown: int


def jobs_ahead(session: Session, job: Job, *, sums: bool = True) -> Ahead:
    """The queued jobs a worker of `job`'s queue takes before `job` (queued): higher priority, then older.

    `sums=False`: how many only (`seconds` and `unknown` are then 0). One statement reads the lines' sums and
    probes both sides of the job within its priority; a second sums the estimates of the side counted.
    """
    values = {"queue": job.queue, "kind": job.kind, "priority": job.priority, "id": job.id, "probe": PROBE + 1}
    row = session.execute(_LINES_AND_PROBES, values).one()  # sums are NUMERIC on PostgreSQL: made plain here
    higher_jobs, higher_seconds, higher_unknown = int(row[0]), float(row[1]), int(row[2])
    line_jobs, line_seconds, line_unknown, near, behind = int(row[3]), float(row[4]), int(row[5]), row[6], row[7]
    if near <= PROBE:  # few ahead within its priority: counted
        same = _counted(session, _AHEAD, values) if sums else Ahead(near, 0.0, 0)
    elif behind <= PROBE:  # few behind (a new job): its line's sums less those behind it and the job itself
        rest, own = (_counted(session, _BEHIND, values) if sums else Ahead(behind, 0.0, 0)), job.estimated_run_seconds
        same = Ahead(jobs=line_jobs - 1 - rest.jobs, seconds=line_seconds - (own or 0.0) - rest.seconds,
                     unknown=line_unknown - (own is None) - rest.unknown)
    else:  # deep on both sides: counted, as before the lines were kept
        same = _counted(session, _AHEAD, values) if sums else Ahead(
            session.scalar(select(func.count()).where(_AHEAD), values), 0.0, 0)
    if not sums:
        return Ahead(jobs=max(higher_jobs + same.jobs, 0), seconds=0.0, unknown=0)
    return Ahead(jobs=max(higher_jobs + same.jobs, 0), seconds=max(higher_seconds + same.seconds, 0.0),
                 unknown=max(higher_unknown + same.unknown, 0))


def _counted(session: Session, where, values: dict) -> Ahead:
    jobs, seconds, unknown = session.execute(
        select(func.count(), func.coalesce(func.sum(Job.estimated_run_seconds), 0.0),
               func.count() - func.count(Job.estimated_run_seconds)).where(where), values).one()
    return Ahead(int(jobs), float(seconds), int(unknown))


# Built once, with bound parameters: every submission's answer and every GET of a queued job run them.
_C, _J = QueueLineChange.__table__.c, Job.__table__.c
_SAME = and_(_J.status == JobStatus.QUEUED, _J.queue == bindparam("queue"), _J.kind == bindparam("kind"),
             _J.priority == bindparam("priority"))
_AHEAD, _BEHIND = and_(_SAME, _J.id < bindparam("id")), and_(_SAME, _J.id > bindparam("id"))


def _line_sum(column, priority):
    return select(func.coalesce(func.sum(column), 0)).where(
        _C.queue == bindparam("queue"), _C.kind == bindparam("kind"), priority).scalar_subquery()


def _probe(where):  # how many jobs `where` selects, counted up to the probe's limit (PROBE + 1) in the index
    return select(func.count()).select_from(select(_J.id).where(where).limit(bindparam("probe")).subquery()
                                            ).scalar_subquery()


_LINES_AND_PROBES = select(
    *(_line_sum(column, _C.priority > bindparam("priority")) for column in (_C.queued, _C.seconds, _C.unknown)),
    *(_line_sum(column, _C.priority == bindparam("priority")) for column in (_C.queued, _C.seconds, _C.unknown)),
    _probe(_AHEAD), _probe(_BEHIND))


def compact(session: Session) -> int:
    """Fold each line's change rows into one (none for an empty line); return how many rows were folded.

    The rows folded are exactly those this DELETE removed: a change committed meanwhile stays for the next
    pass, and two passes at once fold each row once (the second waits for the first's rows, then skips them).
    """
    rows, newest = session.execute(select(func.count(), func.max(QueueLineChange.id))).one()
    line_count = session.scalar(select(func.count()).select_from(
        select(QueueLineChange.queue, QueueLineChange.kind, QueueLineChange.priority).distinct().subquery()))
    if rows <= line_count:  # one row per line already (or none)
        return 0
    folded = session.execute(
        delete(QueueLineChange).where(QueueLineChange.id <= newest)
        .returning(QueueLineChange.queue, QueueLineChange.kind, QueueLineChange.priority, QueueLineChange.queued,
                   QueueLineChange.seconds, QueueLineChange.unknown)).all()
    sums: dict[tuple[str, str, int], list] = {}
    for queue, kind, priority, queued, seconds, unknown in folded:
        line = sums.setdefault((queue, kind, priority), [0, 0.0, 0])
        line[0] += queued
        line[1] += seconds
        line[2] += unknown
    summaries = [{"queue": queue, "kind": kind, "priority": priority, "queued": queued,
                  "seconds": seconds if queued else 0.0, "unknown": unknown}
                 for (queue, kind, priority), (queued, seconds, unknown) in sums.items() if queued or unknown]
    if summaries:
        session.execute(insert(QueueLineChange), summaries)
    return len(folded)
