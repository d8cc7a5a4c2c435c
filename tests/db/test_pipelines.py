"""Pipeline steps wait in SQL for the step before them, on real SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import select

from db.enums import JobStatus
from db.models import Job, JobEvent, OutboxMessage, Pipeline
from db.services.jobs import fail_queued_job, request_cancel
from db.services.leases import LostAttempt, claim_job, end_lost_attempt, finish_job
from db.services.pipelines import (
    Step,
    advance,
    create_pipeline,
    pipeline_jobs,
    pipeline_steps,
    retry_pipeline,
    summarize,
)
from db.services.registry import register_model
from db.services.tenants import get_or_create_tenant


def chain(session_factory, *names: str) -> tuple[int, int, dict[str, int]]:
    """Create a pipeline of finetunes, each later one starting from the model of the step before."""
    with session_factory() as session, session.begin():
        tenant = get_or_create_tenant(session, "acme")
        steps = [Step(name=names[0], kind="finetune", task="text-classification", queue="cpu",
                      params={"base_model": "base", "train_dataset_id": 1})]
        for before, name in zip(names, names[1:]):
            steps.append(Step(name=name, kind="finetune", task="text-classification", queue="cpu", after=before,
                              params={"base_model": f"@{before}", "train_dataset_id": 2}))
        pipeline = create_pipeline(session, tenant_id=tenant.id, name="nightly", steps=steps)
        jobs = {job.pipeline_step: job.id for job in pipeline_steps(session, [pipeline.id])[pipeline.id]}
        return tenant.id, pipeline.id, jobs


def succeed(session_factory, job_id: int, tenant_id: int, model_name: str | None = None) -> None:
    with session_factory() as session, session.begin():
        lease = claim_job(session, job_id, owner="w1", lease_seconds=60, max_interruptions=3)
        values = {}
        if model_name:
            values["model_artifact_id"] = register_model(session, tenant_id=tenant_id, name=model_name,
                                                         task="text-classification", base_model="base",
                                                         path="/m").id
        assert finish_job(session, lease, JobStatus.SUCCEEDED, **values)


def rows(session_factory, jobs: dict[str, int]) -> dict[str, Job]:
    with session_factory() as session:
        return {name: session.get(Job, job_id) for name, job_id in jobs.items()}


def messages(session_factory, job_id: int) -> int:
    with session_factory() as session:
        return len(session.scalars(select(OutboxMessage).where(OutboxMessage.job_id == job_id)).all())


def test_later_steps_wait_without_a_message_until_the_step_before_succeeds(session_factory):
    tenant_id, pipeline_id, jobs = chain(session_factory, "adapt", "tune")
    before = rows(session_factory, jobs)
    assert (before["adapt"].status, before["tune"].status) == ("queued", "waiting")
    assert before["tune"].depends_on_id == jobs["adapt"] and messages(session_factory, jobs["tune"]) == 0

    succeed(session_factory, jobs["adapt"], tenant_id, model_name="adapted")

    after = rows(session_factory, jobs)
    assert after["tune"].status == "queued"
    assert after["tune"].params["base_model"] == "adapted:1"  # the reference resolved to what the step made
    assert messages(session_factory, jobs["tune"]) == 1
    with session_factory() as session:
        assert summarize(pipeline_steps(session, [pipeline_id])[pipeline_id])["status"] == "running"


def test_a_failed_step_cancels_every_step_after_it_with_the_reason(session_factory):
    _tenant_id, pipeline_id, jobs = chain(session_factory, "adapt", "tune", "tune-again")
    with session_factory() as session, session.begin():
        lease = claim_job(session, jobs["adapt"], owner="w1", lease_seconds=60, max_interruptions=3)
        finish_job(session, lease, JobStatus.FAILED, error_code="bad_data", error_message="no text column")

    after = rows(session_factory, jobs)
    assert (after["tune"].status, after["tune-again"].status) == ("cancelled", "cancelled")
    assert after["tune"].error_message == f"not run: step 'adapt' (job {jobs['adapt']}) failed: no text column"
    assert after["tune-again"].error_message.startswith(f"not run: step 'tune' (job {jobs['tune']}) cancelled")
    with session_factory() as session:
        assert summarize(pipeline_steps(session, [pipeline_id])[pipeline_id])["status"] == "failed"
        events = session.scalars(select(JobEvent.message).where(JobEvent.job_id == jobs["tune"])).all()
    assert any(message.startswith("not run: step 'adapt'") for message in events)


def test_cancelling_a_waiting_step_cancels_those_after_it_and_leaves_the_first(session_factory):
    tenant_id, pipeline_id, jobs = chain(session_factory, "adapt", "tune", "tune-again")
    with session_factory() as session, session.begin():
        request_cancel(session, tenant_id, jobs["tune"])
    after = rows(session_factory, jobs)
    assert [after[name].status for name in ("adapt", "tune", "tune-again")] == ["queued", "cancelled", "cancelled"]


def test_steps_after_one_failed_before_it_started_or_lost_for_good_are_cancelled(session_factory):
    tenant_id, _pipeline_id, jobs = chain(session_factory, "adapt", "tune")
    with session_factory() as session, session.begin():
        assert fail_queued_job(session, jobs["adapt"], code="dataset_missing", reason="dataset 1 was deleted")
    assert rows(session_factory, jobs)["tune"].status == "cancelled"

    tenant_id, _pipeline_id, jobs = chain(session_factory, "adapt", "tune")
    with session_factory() as session, session.begin():
        claim_job(session, jobs["adapt"], owner="w1", lease_seconds=-1, max_interruptions=0)  # expired at once
        job = session.get(Job, jobs["adapt"])
        assert end_lost_attempt(session, job, LostAttempt.LEASE_EXPIRED, delay_seconds=0,
                                max_interruptions=0) == "failed"
    assert rows(session_factory, jobs)["tune"].status == "cancelled"


def test_the_sweep_backstop_releases_a_step_whose_release_was_missed(session_factory):
    tenant_id, _pipeline_id, jobs = chain(session_factory, "adapt", "tune")
    succeed(session_factory, jobs["adapt"], tenant_id, model_name="adapted")
    # As if the release had been lost: put the step back to waiting, then let the backstop find it.
    with session_factory() as session, session.begin():
        session.get(Job, jobs["tune"]).status = JobStatus.WAITING
        for message in session.scalars(select(OutboxMessage).where(OutboxMessage.job_id == jobs["tune"])):
            session.delete(message)
    with session_factory() as session, session.begin():
        assert advance(session) == {"released": 1, "cancelled": 0}
    with session_factory() as session, session.begin():
        assert advance(session) == {"released": 0, "cancelled": 0}  # once only
    assert rows(session_factory, jobs)["tune"].status == "queued" and messages(session_factory, jobs["tune"]) == 1


def test_a_step_whose_reference_made_no_model_is_cancelled_with_that_reason(session_factory):
    tenant_id, _pipeline_id, jobs = chain(session_factory, "adapt", "tune")
    succeed(session_factory, jobs["adapt"], tenant_id, model_name=None)
    tune = rows(session_factory, jobs)["tune"]
    assert tune.status == "cancelled"
    assert tune.error_message == "not run: step 'adapt' registered no model for its base_model parameter"


def retry(session_factory, pipeline_id: int) -> dict[str, Job]:
    """Run the pipeline's steps that did not succeed again, as the API does; return the new jobs by step."""
    with session_factory() as session, session.begin():
        current = pipeline_steps(session, [pipeline_id])[pipeline_id]
        step_of = {job.id: job.pipeline_step for job in pipeline_jobs(session, pipeline_id)}
        steps = [Step(name=job.pipeline_step, kind=job.kind, task=job.task, params=job.params, queue=job.queue,
                      after=step_of.get(job.depends_on_id)) for job in current if job.status != JobStatus.SUCCEEDED]
        new = retry_pipeline(session, session.get(Pipeline, pipeline_id), steps)
        return {job.pipeline_step: job for job in new}


def test_a_retry_runs_the_failed_step_and_those_after_it_from_the_models_of_those_that_succeeded(session_factory):
    tenant_id, pipeline_id, jobs = chain(session_factory, "adapt", "tune", "tune-again")
    succeed(session_factory, jobs["adapt"], tenant_id, model_name="adapted")
    with session_factory() as session, session.begin():
        lease = claim_job(session, jobs["tune"], owner="w1", lease_seconds=60, max_interruptions=3)
        finish_job(session, lease, JobStatus.FAILED, error_code="out_of_memory", error_message="the batch was too big")
    assert rows(session_factory, jobs)["tune-again"].status == "cancelled"

    new = retry(session_factory, pipeline_id)

    assert sorted(new) == ["tune", "tune-again"]  # 'adapt' succeeded: kept, not run again
    tune, again = rows(session_factory, {name: job.id for name, job in new.items()}).values()
    assert tune.status == "queued" and tune.params["base_model"] == "adapted:1" and messages(session_factory, tune.id) == 1
    assert tune.depends_on_id == jobs["adapt"]
    assert again.status == "waiting" and again.depends_on_id == tune.id and again.params["base_model"] == "@tune"
    assert [(job.status, job.error_code) for job in rows(session_factory, jobs).values()] == [
        ("succeeded", None), ("failed", "out_of_memory"), ("cancelled", "dependency_not_succeeded")]  # history kept
    with session_factory() as session:
        assert [job.id for job in pipeline_steps(session, [pipeline_id])[pipeline_id]] == [jobs["adapt"], tune.id,
                                                                                           again.id]
        assert summarize(pipeline_steps(session, [pipeline_id])[pipeline_id])["status"] == "running"
        assert session.scalars(select(JobEvent.message).where(JobEvent.job_id == tune.id)).all()[-2:] == [
            f"step 'tune' run again: job {jobs['tune']} failed",
            f"step 'adapt' (job {jobs['adapt']}) succeeded; queued on 'cpu'"]

    succeed(session_factory, tune.id, tenant_id, model_name="tuned")  # registers tuned:1, the second run's model
    again = rows(session_factory, {"again": again.id})["again"]
    assert again.status == "queued" and again.params["base_model"] == "tuned:1"


def test_a_retry_of_a_failed_first_step_queues_it_at_once_and_the_rest_wait_for_it(session_factory):
    _tenant_id, pipeline_id, jobs = chain(session_factory, "adapt", "tune")
    with session_factory() as session, session.begin():
        assert fail_queued_job(session, jobs["adapt"], code="dataset_missing", reason="dataset 1 was deleted")

    new = retry(session_factory, pipeline_id)

    adapt, tune = rows(session_factory, {name: job.id for name, job in new.items()}).values()
    assert adapt.status == "queued" and adapt.depends_on_id is None and messages(session_factory, adapt.id) == 1
    assert tune.status == "waiting" and tune.depends_on_id == adapt.id and messages(session_factory, tune.id) == 0
