"""Jobs that must not start before a time or a run window: scheduled, cancellable, released by the sweeper."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, update

from db.base import utcnow
from db.models import Job, OutboxMessage
from db.services.schedule import Window, parse_windows, release_due, window_closes, window_opens
from tests.api.helpers import API, assert_error, evaluate_body, finetune_body, submit

NIGHTLY = Window("nightly", time(22, 0), time(6, 0))


@pytest.mark.parametrize(("now", "opens"), [
    (datetime(2026, 11, 29, 12, 0), datetime(2026, 11, 29, 22, 0)),  # midday: tonight
    (datetime(2026, 11, 29, 23, 30), datetime(2026, 11, 29, 23, 30)),  # open: now
    (datetime(2026, 11, 30, 3, 0), datetime(2026, 11, 30, 3, 0)),  # after midnight, still open
    (datetime(2026, 11, 30, 6, 0), datetime(2026, 11, 30, 22, 0)),  # closed at 06:00 sharp
])
def test_a_window_past_midnight_opens_tonight_or_is_open_now(now, opens):
    assert window_opens(NIGHTLY, ZoneInfo("UTC"), now) == opens


@pytest.mark.parametrize(("now", "closes"), [
    (datetime(2026, 11, 29, 23, 30), datetime(2026, 11, 30, 6, 0)),  # open tonight: closes tomorrow morning
    (datetime(2026, 11, 30, 3, 0), datetime(2026, 11, 30, 6, 0)),  # after midnight: this morning
    (datetime(2026, 11, 30, 6, 0), None),  # closed
    (datetime(2026, 11, 29, 12, 0), None),
])
def test_a_window_open_now_says_when_it_closes(now, closes):
    assert window_closes(NIGHTLY, ZoneInfo("UTC"), now) == closes


def test_a_window_may_give_seconds():
    window = parse_windows("soon=10:00:05-10:00:30")["soon"]
    assert (window.start, window.end, str(window)) == (time(10, 0, 5), time(10, 0, 30), "soon (10:00:05-10:00:30)")
    assert window_closes(window, ZoneInfo("UTC"), datetime(2026, 11, 29, 10, 0, 10)) == datetime(2026, 11, 29, 10, 0, 30)
    assert window_opens(window, ZoneInfo("UTC"), datetime(2026, 11, 29, 10, 0, 30)) == datetime(2026, 11, 30, 10, 0, 5)


def test_windows_are_read_in_their_time_zone():
    paris = ZoneInfo("Europe/Paris")  # UTC+1 in winter: 22:00 in Paris is 21:00 UTC
    assert window_opens(NIGHTLY, paris, datetime(2026, 11, 29, 12, 0)) == datetime(2026, 11, 29, 21, 0)
    office = parse_windows("office = 9:00-17:30, nightly=22:00-06:00")
    assert office["office"] == Window("office", time(9, 0), time(17, 30)) and office["nightly"] == NIGHTLY
    assert window_opens(office["office"], ZoneInfo("UTC"), datetime(2026, 11, 29, 18, 0)) == datetime(2026, 11, 30, 9)
    with pytest.raises(ValueError, match="not name=HH:MM-HH:MM"):
        parse_windows("nightly=22-06")


def test_a_job_for_the_nightly_window_is_scheduled_without_a_message(app, client, auth, labelled, tiny_model,
                                                                     queue_length):
    waiting = queue_length("gpu")
    job = submit(client, auth, {**evaluate_body(labelled["id"], tiny_model), "not_before": "nightly"})
    opens = window_opens(NIGHTLY, ZoneInfo("UTC"), utcnow())

    if opens <= utcnow():  # the test runs inside the window: the job is queued at once
        assert job["status"] == "queued"
        return
    assert job["status"] == "scheduled" and job["queue_position"] is None
    assert abs(datetime.fromisoformat(job["not_before"]).replace(tzinfo=None) - opens) < timedelta(seconds=1)
    assert queue_length("gpu") == waiting
    with app.extensions["nightshift"].session_factory() as session:
        assert session.scalars(select(OutboxMessage).where(OutboxMessage.job_id == job["id"])).all() == []


def test_the_sweeper_releases_a_scheduled_job_when_its_time_comes(app, client, auth, labelled, tiny_model):
    later = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    job = submit(client, auth, {**evaluate_body(labelled["id"], tiny_model), "not_before": later})
    assert job["status"] == "scheduled"
    factory = app.extensions["nightshift"].session_factory
    with factory.begin() as session:
        assert release_due(session) == 0  # not yet
        session.execute(update(Job).where(Job.id == job["id"]).values(not_before=utcnow() - timedelta(seconds=1)))
        assert release_due(session) == 1

    released = client.get(f"{API}/jobs/{job['id']}", headers=auth).get_json()
    assert released["status"] == "queued" and released["queue_position"] == 1
    with factory() as session:
        assert [m.sent_at for m in session.scalars(select(OutboxMessage).where(OutboxMessage.job_id == job["id"]))] \
            == [None]  # the relay sends it
    events = client.get(f"{API}/jobs/{job['id']}/events", headers=auth).get_json()["items"]
    assert [e["data"]["status"] for e in events if e["type"] == "status"] == ["scheduled", "queued"]


def test_a_past_time_queues_the_job_at_once_and_a_scheduled_one_can_be_cancelled(client, auth, labelled,
                                                                                   tiny_model):
    past = submit(client, auth, {**evaluate_body(labelled["id"], tiny_model), "not_before": "2020-01-01T00:00:00Z"})
    assert past["status"] == "queued"
    job = submit(client, auth, {**evaluate_body(labelled["id"], tiny_model), "not_before": "2099-01-01T00:00:00"})
    cancelled = client.post(f"{API}/jobs/{job['id']}/cancel", headers=auth).get_json()
    assert (job["status"], cancelled["status"]) == ("scheduled", "cancelled")


@pytest.mark.parametrize(("value", "code", "says"), [
    ("weekends", "unknown_window", "not_before: 'weekends' is neither a time"),
    ("2026-13-01T00:00:00", "invalid_input", "not_before: '2026-13-01T00:00:00' is not an ISO 8601 time"),
])
def test_an_unknown_window_or_a_bad_time_is_422_listing_the_windows(app, client, auth, labelled, tiny_model, value,
                                                                     code, says):
    response = client.post(f"{API}/jobs", headers=auth,
                           json={**evaluate_body(labelled["id"], tiny_model), "not_before": value})
    error = assert_error(response, 422, code, says)
    assert error["details"]["field"] == "not_before"
    if code == "unknown_window":
        assert "nightly (22:00-06:00)" in error["message"] and error["details"]["windows"] == ["nightly"]


def test_a_job_that_pauses_outside_its_window_records_the_window(client, auth, labelled, tiny_model):
    job = submit(client, auth, {**finetune_body(labelled["id"], tiny_model), "not_before": "nightly",
                                "pause_outside_window": True})
    assert job["run_window"] == "nightly" and job["status"] in ("scheduled", "queued")
    plain = submit(client, auth, {**finetune_body(labelled["id"], tiny_model), "not_before": "nightly"})
    assert plain["run_window"] is None  # runs to its end once started


@pytest.mark.parametrize(("kind", "not_before", "code", "says"), [
    ("finetune", None, "window_required", "pause_outside_window: not_before must name a run window"),
    ("finetune", "2030-01-01T22:00:00Z", "window_required", "not_before must name a run window"),
    ("evaluate", "nightly", "cannot_pause", "evaluate jobs have nothing to resume from"),
])
def test_pausing_needs_a_window_and_a_job_that_can_resume(app, client, auth, labelled, tiny_model, kind, not_before,
                                                          code, says):
    body = finetune_body(labelled["id"], tiny_model) if kind == "finetune" else evaluate_body(labelled["id"], tiny_model)
    response = client.post(f"{API}/jobs", headers=auth,
                           json={**body, "not_before": not_before, "pause_outside_window": True})
    error = assert_error(response, 422, code, says)
    assert error["details"]["field"] == "pause_outside_window"
    with app.extensions["nightshift"].session_factory() as session:
        assert session.scalars(select(Job)).all() == []
