"""Run windows: jobs that must not start before a time, or before a named window (e.g. nightly) opens.

A job submitted with `not_before` in the future is written `scheduled`, with no outbox message, so no
worker can start it; the sweeper (every few seconds, in beat) releases it to `queued` with its message
once that time has come. The time lives in the job row, like every other part of a job's state.

Windows are configured as `name=HH:MM-HH:MM` pairs in one time zone (`NIGHTSHIFT_RUN_WINDOWS`,
`NIGHTSHIFT_TIMEZONE`); a window whose end is before its start runs past midnight (22:00-06:00).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.base import utcnow
from db.enums import JobStatus
from db.models import Job
from db.services.jobs import add_event, enqueue, status_guard

WINDOW = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(\d{1,2}):(\d{2})(?::(\d{2}))?\s*-\s*(\d{1,2}):(\d{2})(?::(\d{2}))?\s*$")


@dataclass(frozen=True)
class Window:
    name: str
    start: time
    end: time

    def __str__(self) -> str:
        return f"{self.name} ({_clock(self.start)}-{_clock(self.end)})"


def _clock(moment: time) -> str:
    return f"{moment:%H:%M:%S}" if moment.second else f"{moment:%H:%M}"


def parse_windows(spec: str) -> dict[str, Window]:
    """Parse "nightly=22:00-06:00,weekend=00:00-23:59" into windows by name; raise ValueError saying what is wrong."""
    windows: dict[str, Window] = {}
    for part in filter(str.strip, spec.split(",")):
        match = WINDOW.match(part)
        if not match:
            raise ValueError(f"run window {part.strip()!r} is not name=HH:MM-HH:MM (e.g. nightly=22:00-06:00)")
        name, *digits = match.groups()
        h1, m1, s1, h2, m2, s2 = (int(d or 0) for d in digits)
        if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59 or s1 > 59 or s2 > 59:
            raise ValueError(f"run window {part.strip()!r} has a time that is not on a 24-hour clock")
        windows[name] = Window(name, time(h1, m1, s1), time(h2, m2, s2))
    return windows


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"time zone {name!r} is not known; use an IANA name such as Europe/Paris or UTC") from None


def window_opens(window: Window, tz: ZoneInfo, now: datetime) -> datetime:
    """Return when `window` next lets a job start, as naive UTC: `now` itself if it is open now."""
    opens, _closes = _occurrence(window, tz, now)
    return now if opens is None else opens


def window_closes(window: Window, tz: ZoneInfo, now: datetime) -> datetime | None:
    """Return when the occurrence of `window` open at `now` closes, as naive UTC; None if it is closed now."""
    opens, closes = _occurrence(window, tz, now)
    return closes if opens is None else None


def _occurrence(window: Window, tz: ZoneInfo, now: datetime) -> tuple[datetime | None, datetime]:
    """(None, its close) if `window` is open at `now`, else (its next opening, that occurrence's close); naive UTC."""
    local = now.replace(tzinfo=UTC).astimezone(tz)
    for day in (-1, 0, 1):  # yesterday's window may still be open after midnight
        date = (local + timedelta(days=day)).date()
        opens = datetime.combine(date, window.start, tzinfo=tz)
        closes = datetime.combine(date + timedelta(days=1 if window.end <= window.start else 0), window.end, tzinfo=tz)
        if opens <= local < closes:
            return None, _utc(closes)
        if local < opens:
            return _utc(opens), _utc(closes)
    raise AssertionError("a daily window opens within a day")  # pragma: no cover


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


def release_due(session: Session, now: datetime | None = None) -> int:
    """Queue every scheduled job whose time has come, with its wake-up message; return how many."""
    now = now or utcnow()
    due = session.scalars(select(Job.id).where(Job.status == JobStatus.SCHEDULED, Job.not_before <= now)
                          .order_by(Job.id).limit(1000)).all()
    released = 0
    for job_id in due:
        moved = session.execute(update(Job).where(Job.id == job_id, status_guard(JobStatus.SCHEDULED, JobStatus.QUEUED))
                                .values(status=JobStatus.QUEUED, updated_at=now)).rowcount
        if moved:
            job = session.get(Job, job_id)
            enqueue(session, job)
            add_event(session, job_id, "status", f"its start time has come: queued on '{job.queue}'",
                      data={"status": "queued"})
            released += 1
    return released
