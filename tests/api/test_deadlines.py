"""Deadlines and estimates: how long a job should take, from past jobs like it, and a warning before it runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from db.base import utcnow
from db.models import Job
from tests.api.helpers import API, assert_error, batch_body, evaluate_body, finetune_body, submit


def finish(app, job_id: int, *, rows: int, seconds: float, **values) -> None:
    now = utcnow()
    with app.extensions["nightshift"].session_factory.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(
            status="succeeded", started_at=now - timedelta(seconds=seconds), finished_at=now, progress_total=rows,
            **values))


def in_minutes(minutes: float) -> str:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).isoformat()


@pytest.fixture
def measured(app, client, auth, unlabelled, tiny_model) -> None:
    """Three past batch jobs of the tiny model: 3 rows in 1, 3 and 2 s (3, 1 and 1.5 rows/s: median 1.5)."""
    for seconds in (1.0, 3.0, 2.0):
        job = submit(client, auth, batch_body(unlabelled["id"], tiny_model))
        finish(app, job["id"], rows=3, seconds=seconds)


def test_a_job_is_estimated_from_past_jobs_with_the_same_model(client, auth, unlabelled, tiny_model, measured):
    job = submit(client, auth, {**batch_body(unlabelled["id"], tiny_model), "deadline": in_minutes(60)})

    rows = unlabelled["row_count"]
    assert job["estimated_run_seconds"] == pytest.approx(rows / 1.5, rel=1e-3)  # at the median rate
    assert job["deadline_at_risk"] is False
    finish_at = datetime.fromisoformat(job["expected_finish_at"])
    assert abs((finish_at - datetime.now(UTC)).total_seconds() - rows / 1.5) < 30
    events = client.get(f"{API}/jobs/{job['id']}/events", headers=auth).get_json()["items"]
    assert not any("deadline" in e["message"] for e in events)


def test_a_job_that_cannot_make_its_deadline_says_so_before_it_runs(app, client, auth, unlabelled, tiny_model,
                                                                   measured):
    job = submit(client, auth, {**batch_body(unlabelled["id"], tiny_model), "not_before": in_minutes(30),
                                "deadline": in_minutes(30.005)})  # 0.3 s to do over a second of work

    assert job["status"] == "scheduled" and job["deadline_at_risk"] is True
    [warning] = [e for e in client.get(f"{API}/jobs/{job['id']}/events", headers=auth).get_json()["items"]
                 if e["level"] == "warning"]
    assert warning["message"].startswith("at submitted: this job will likely miss its deadline of ")
    rows = unlabelled["row_count"]
    assert (f"{rows} rows at 1.5 rows/s (the median of 3 past jobs with the same model): about {rows / 1.5:.0f} s"
            in warning["message"])
    assert warning["data"]["deadline_at_risk"] is True


def test_without_past_jobs_there_is_no_estimate_and_no_warning(client, auth, labelled, tiny_model):
    job = submit(client, auth, {**evaluate_body(labelled["id"], tiny_model), "deadline": in_minutes(1)})
    assert (job["estimated_run_seconds"], job["expected_finish_at"], job["deadline_at_risk"]) == (None, None, None)


def test_a_fine_tune_is_estimated_from_training_samples_per_second(app, client, auth, labelled, tiny_model):
    past = submit(client, auth, finetune_body(labelled["id"], tiny_model, max_steps=10, batch_size=8))
    finish(app, past["id"], rows=10, seconds=5, result={"train": {"train_samples_per_second": 40.0}})

    job = submit(client, auth, finetune_body(labelled["id"], tiny_model, max_steps=100, batch_size=8))

    assert job["estimated_run_seconds"] == pytest.approx(100 * 8 / 40.0)


def test_the_time_a_job_spends_besides_its_work_is_estimated_apart(app, client, auth, labelled, unlabelled,
                                                                   tiny_model):
    """Loading, probes and saving do not grow with the work: a past job's overhead is added once, not scaled."""
    past = submit(client, auth, finetune_body(labelled["id"], tiny_model, max_steps=10, batch_size=8))
    finish(app, past["id"], rows=10, seconds=5,
           result={"train": {"train_samples_per_second": 40.0, "train_runtime_s": 2.0}})  # 3 s besides training
    job = submit(client, auth, finetune_body(labelled["id"], tiny_model, max_steps=100, batch_size=8))
    assert job["estimated_run_seconds"] == pytest.approx(3.0 + 100 * 8 / 40.0)

    batch = submit(client, auth, batch_body(unlabelled["id"], tiny_model))
    finish(app, batch["id"], rows=300, seconds=10,
           result={"seconds": {"loading model": 6.0, "predicting": 3.0, "writing": 1.0}})  # 75 rows/s while working
    job = submit(client, auth, {**batch_body(unlabelled["id"], tiny_model), "deadline": in_minutes(0.05)})
    rows = unlabelled["row_count"]
    assert job["estimated_run_seconds"] == pytest.approx(6.0 + rows / 75.0)
    [warning] = [e for e in client.get(f"{API}/jobs/{job['id']}/events", headers=auth).get_json()["items"]
                 if e["level"] == "warning"]
    assert f"{rows} rows at 75.0 rows/s plus 6 s to load and save (the median of 1 past job with" in warning["message"]

    # A job that measured the machine's speed first (once per machine and model) does not teach the estimate
    # that every job spends that time.
    probing = submit(client, auth, batch_body(unlabelled["id"], tiny_model))
    finish(app, probing["id"], rows=300, seconds=30,
           result={"seconds": {"loading model": 6.0, "tuning": 20.0, "predicting": 3.0, "writing": 1.0}})
    tuned = submit(client, auth, finetune_body(labelled["id"], tiny_model, max_steps=10, batch_size=8))
    finish(app, tuned["id"], rows=10, seconds=25, result={"train": {"train_samples_per_second": 40.0,
                                                                    "train_runtime_s": 2.0, "tuning_s": 20.0}})
    assert submit(client, auth, batch_body(unlabelled["id"], tiny_model))["estimated_run_seconds"] == pytest.approx(
        6.0 + rows / 75.0)
    assert submit(client, auth, finetune_body(labelled["id"], tiny_model, max_steps=100, batch_size=8))[
        "estimated_run_seconds"] == pytest.approx(3.0 + 100 * 8 / 40.0)


@pytest.mark.parametrize(("fields", "says"), [
    ({"deadline": "2020-01-01T00:00:00Z"}, "deadline: 2020-01-01 00:00:00 UTC has passed"),
    ({"deadline": "2099-01-01T00:00:00Z", "not_before": "2099-01-02T00:00:00Z"},
     "comes before the job may start (2099-01-02 00:00:00 UTC)"),
])
def test_a_deadline_that_has_passed_or_comes_before_the_start_is_422(app, client, auth, labelled, tiny_model, fields,
                                                                      says):
    response = client.post(f"{API}/jobs", headers=auth, json={**evaluate_body(labelled["id"], tiny_model), **fields})
    assert assert_error(response, 422, "deadline_passed", says)["details"]["field"] == "deadline"


def test_a_queued_job_expects_to_start_when_the_work_ahead_is_shared_among_live_workers(app, client, auth, labelled,
                                                                                       tiny_model):
    from db.services.workers import record_heartbeat

    running, first, second = (submit(client, auth, evaluate_body(labelled["id"], tiny_model)) for _ in range(3))
    factory = app.extensions["nightshift"].session_factory
    with factory.begin() as session:
        session.execute(update(Job).where(Job.id == running["id"]).values(status="running", eta_seconds=100.0))
        session.execute(update(Job).where(Job.id.in_([first["id"], second["id"]])).values(estimated_run_seconds=50.0))
    assert client.get(f"{API}/jobs/{second['id']}", headers=auth).get_json()["expected_start_at"] is None  # no worker

    with factory.begin() as session:
        record_heartbeat(session, "gpu@a", "a", 1, ["gpu"], {"kind": "cpu"})
    job = client.get(f"{API}/jobs/{second['id']}", headers=auth).get_json()
    wait = (datetime.fromisoformat(job["expected_start_at"]) - datetime.now(UTC)).total_seconds()
    assert 140 < wait <= 150  # 100 s left on the running job and 50 s for the one ahead, one worker
    assert job["queue_position"] == 2
    finish_at = datetime.fromisoformat(job["expected_finish_at"])
    assert (finish_at - datetime.fromisoformat(job["expected_start_at"])).total_seconds() == pytest.approx(50.0)

    with factory.begin() as session:
        record_heartbeat(session, "gpu@b", "b", 2, ["cpu", "gpu"], {"kind": "cpu"})
    job = client.get(f"{API}/jobs/{second['id']}", headers=auth).get_json()
    assert 65 < (datetime.fromisoformat(job["expected_start_at"]) - datetime.now(UTC)).total_seconds() <= 75


def test_a_running_job_without_an_eta_holds_its_worker_for_its_estimate_less_the_time_it_has_run(app, client, auth,
                                                                                                  labelled, tiny_model):
    from db.services.workers import record_heartbeat

    running, queued = (submit(client, auth, evaluate_body(labelled["id"], tiny_model)) for _ in range(2))
    with app.extensions["nightshift"].session_factory.begin() as session:
        session.execute(update(Job).where(Job.id == running["id"]).values(
            status="running", estimated_run_seconds=100.0, started_at=utcnow() - timedelta(seconds=40)))
        record_heartbeat(session, "gpu@a", "a", 1, ["gpu"], {"kind": "cpu"})

    job = client.get(f"{API}/jobs/{queued['id']}", headers=auth).get_json()

    assert job["queue_position"] == 1
    assert 50 < (datetime.fromisoformat(job["expected_start_at"]) - datetime.now(UTC)).total_seconds() <= 60


def test_a_queued_jobs_place_and_start_come_from_one_read_of_the_jobs_ahead(app, client, auth, labelled, tiny_model):
    from sqlalchemy import event

    from db.services.workers import record_heartbeat

    first, second = (submit(client, auth, evaluate_body(labelled["id"], tiny_model)) for _ in range(2))
    factory = app.extensions["nightshift"].session_factory
    with factory.begin() as session:
        session.execute(update(Job).where(Job.id == first["id"]).values(estimated_run_seconds=50.0))
        record_heartbeat(session, "gpu@a", "a", 1, ["gpu"], {"kind": "cpu"})
    statements = []

    def record(_conn, _cursor, statement, *_args):
        statements.append(statement)

    engine = app.extensions["nightshift"].engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        job = client.get(f"{API}/jobs/{second['id']}", headers=auth).get_json()
    finally:
        event.remove(engine, "before_cursor_execute", record)

    assert job["queue_position"] == 2 and job["expected_start_at"] is not None
    assert sum("queue_line_changes" in statement for statement in statements) == 1  # the lines' sums, read once


def test_a_scheduled_job_expects_to_start_at_its_time_behind_the_jobs_released_with_it(app, client, auth, labelled,
                                                                                      tiny_model):
    from db.services.workers import record_heartbeat

    tonight = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    urgent, bulk, later = (submit(client, auth, {**evaluate_body(labelled["id"], tiny_model), "priority": priority,
                                                 "not_before": when.isoformat()})
                           for priority, when in ((9, tonight), (3, tonight), (9, tonight + timedelta(hours=1))))
    factory = app.extensions["nightshift"].session_factory
    with factory.begin() as session:
        session.execute(update(Job).where(Job.id.in_([urgent["id"], bulk["id"], later["id"]]))
                        .values(estimated_run_seconds=600.0))
        record_heartbeat(session, "gpu@a", "a", 1, ["gpu"], {"kind": "cpu"})

    def start(job) -> datetime:
        return datetime.fromisoformat(client.get(f"{API}/jobs/{job['id']}", headers=auth).get_json()["expected_start_at"])

    assert start(urgent) == tonight  # first in line when its window opens
    assert start(bulk) == tonight + timedelta(seconds=600)  # behind the urgent one released with it
    assert start(later) == tonight + timedelta(hours=1)  # released later, after both are done
    with factory.begin() as session:
        record_heartbeat(session, "gpu@b", "b", 2, ["gpu"], {"kind": "cpu"})
    assert start(bulk) == tonight  # a second worker takes it as the window opens


def test_the_simulated_start_keeps_to_the_per_tenant_cap():
    from collections import namedtuple

    from db.services.estimates import _simulated_start

    Row = namedtuple("Row", "id tenant_id priority not_before estimated_run_seconds")
    now = datetime(2026, 11, 29, 12, 0)
    tonight = datetime(2026, 11, 29, 22, 0)
    bulk = [Row(i, 1, 3, tonight, 600.0) for i in (1, 2)]  # tenant 1's two jobs, released with ours
    ours = Job(id=3, tenant_id=1, priority=3, not_before=tonight)
    running = [(1800.0, 2)]  # tenant 2's job, half an hour left, on one of the two workers

    assert _simulated_start(ours, bulk, running, workers=2, cap=0, now=now) == tonight + timedelta(seconds=600)
    # One job at a time for tenant 1: its jobs run one after another, though a worker is free.
    assert _simulated_start(ours, bulk, running, workers=2, cap=1, now=now) == tonight + timedelta(seconds=1200)
    # Another tenant's job, released with them but of lower priority, takes the idle worker first.
    other = Row(4, 2, 1, tonight, 600.0)
    assert _simulated_start(Job(id=5, tenant_id=3, priority=0, not_before=tonight), [*bulk, other],
                            [], workers=2, cap=1, now=now) == tonight + timedelta(seconds=600)
