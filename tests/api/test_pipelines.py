"""POST /pipelines: steps checked like jobs, the first queued, the rest waiting; refusals say what to fix."""

from __future__ import annotations

import pytest

from tests.api.helpers import API, assert_error, batch_body, evaluate_body, finetune_body


def submit_pipeline(client, auth, body, status: int = 202) -> dict:
    response = client.post(f"{API}/pipelines", headers=auth, json=body)
    assert response.status_code == status, response.get_data(as_text=True)
    return response.get_json()


def three_steps(labelled, unlabelled, tiny_model) -> dict:
    return {"name": "nightly", "steps": [
        {"name": "tune", **finetune_body(labelled["id"], tiny_model, max_steps=2, model_name="sentiment")},
        {"name": "check", **evaluate_body(labelled["id"], "@tune")},
        {"name": "label", "after": "tune", **batch_body(unlabelled["id"], "@tune")},
    ]}


def test_first_step_is_queued_and_the_others_wait_for_it(client, auth, labelled, unlabelled, tiny_model,
                                                          queue_length):
    waiting = queue_length("gpu")
    pipeline = submit_pipeline(client, auth, three_steps(labelled, unlabelled, tiny_model))

    steps = {step["name"]: step for step in pipeline["steps"]}
    assert (pipeline["name"], pipeline["status"], pipeline["progress"]) == ("nightly", "queued", 0.0)
    assert [(s["name"], s["after"], s["job"]["status"]) for s in pipeline["steps"]] == [
        ("tune", None, "queued"), ("check", "tune", "waiting"), ("label", "tune", "waiting")]
    assert steps["check"]["job"]["params"]["model"] == "@tune"  # resolved when 'tune' has registered its model
    assert steps["label"]["job"]["depends_on_id"] == steps["tune"]["job"]["id"]
    assert all(s["job"]["pipeline_id"] == pipeline["id"] for s in pipeline["steps"])
    assert client.get(f"{API}/pipelines/{pipeline['id']}", headers=auth).get_json() == pipeline
    assert [p["id"] for p in client.get(f"{API}/pipelines", headers=auth).get_json()["items"]] == [pipeline["id"]]
    waiting_jobs = client.get(f"{API}/jobs?status=waiting", headers=auth).get_json()["items"]
    assert sorted(j["pipeline_step"] for j in waiting_jobs) == ["check", "label"]
    events = client.get(f"{API}/pipelines/{pipeline['id']}/events", headers=auth).get_json()["items"]
    assert {e["pipeline_step"] for e in events} == {"tune", "check", "label"}
    assert queue_length("gpu") == waiting + 1  # the first step's message only: a waiting step has none


def test_cancelling_the_pipeline_cancels_every_step(client, auth, labelled, unlabelled, tiny_model):
    pipeline = submit_pipeline(client, auth, three_steps(labelled, unlabelled, tiny_model))

    response = client.post(f"{API}/pipelines/{pipeline['id']}/cancel", headers=auth)

    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "cancelled"
    assert [s["job"]["status"] for s in body["steps"]] == ["cancelled", "cancelled", "cancelled"]
    reason = f"not run: pipeline {pipeline['id']} was cancelled"
    assert [s["job"]["error"] and (s["job"]["error"]["code"], s["job"]["error"]["message"]) for s in body["steps"]] == [
        None, ("pipeline_cancelled", reason), ("pipeline_cancelled", reason)]  # the queued one: cancelled before it started


@pytest.mark.parametrize("change, code, mentions", [
    (lambda steps: steps[1].update(name="tune"), "duplicate_step", ["steps[1].name", "'tune'", "own name"]),
    (lambda steps: steps[2].update(after="nowhere"), "unknown_step", ["steps[2].after", "'nowhere'", "'tune', 'check'"]),
    (lambda steps: steps[1].update(after="label"), "unknown_step", ["steps[1].after", "'label'"]),
    (lambda steps: (steps[2].update(after="check"), steps[2]["params"].update(model="@check")), "step_reference",
     ["steps[2].params.model", "step 'check' (evaluate) registers no model"]),
    (lambda steps: (steps[2].update(after=None)), "step_reference",
     ["steps[2].params.model", "'@tune' is not a step 'label' runs after", "no step"]),
    (lambda steps: steps[0]["params"].update(learning_rate=-1), "invalid_input",
     ["steps[0].params.learning_rate", "greater than 0"]),
    (lambda steps: steps[1]["params"].update(dataset_id=999999), "dataset_not_found", ["steps[1] ('check')", "999999"]),
    (lambda steps: steps[0].update(kind="pretrain", params={"base_model": steps[0]["params"]["base_model"],
                                                            "train_dataset_id": steps[2]["params"]["dataset_id"]}),
     "no_task_head", ["steps[1].params.model", "step 'tune' registers a pre-trained language model without a "
                      "text-classification head", "base_model '@tune'"]),
    (lambda steps: steps[1].update(task="token-classification"), "wrong_task",
     ["steps[1].params.model", "step 'tune' registers a text-classification model; step 'check' is token-classification"]),
    (lambda steps: steps[1].update(kind="merge", params={"model": "@tune"}), "not_an_adapter",
     ["steps[1].params.model", "step 'tune' registers a full model, not a LoRA adapter"]),
], ids=["duplicate-name", "after-unknown", "after-later", "reference-to-evaluate", "reference-not-before",
        "bad-parameter", "missing-dataset", "evaluate-a-pretrained-base", "other-task", "merge-a-full-model"])
def test_bad_pipeline_is_refused_naming_the_step_and_field(client, auth, labelled, unlabelled, tiny_model,
                                                            change, code, mentions):
    body = three_steps(labelled, unlabelled, tiny_model)
    change(body["steps"])

    response = client.post(f"{API}/pipelines", headers=auth, json=body)

    assert_error(response, 422, code, *mentions)
    assert client.get(f"{API}/jobs", headers=auth).get_json()["items"] == []  # nothing half-created


def test_a_lora_step_merged_then_evaluated_is_accepted(client, auth, labelled, tiny_model):
    pipeline = submit_pipeline(client, auth, {"steps": [
        {"name": "tune", **finetune_body(labelled["id"], tiny_model, max_steps=2, lora={"r": 4})},
        {"name": "full", "kind": "merge", "params": {"model": "@tune", "model_name": "sentiment-full"}},
        {"name": "check", **evaluate_body(labelled["id"], "@full")},
    ]})

    assert [(s["name"], s["job"]["kind"], s["job"]["status"]) for s in pipeline["steps"]] == [
        ("tune", "finetune", "queued"), ("full", "merge", "waiting"), ("check", "evaluate", "waiting")]


def test_a_step_reference_outside_a_pipeline_is_refused(client, auth, labelled, tiny_model):
    response = client.post(f"{API}/jobs", headers=auth, json=evaluate_body(labelled["id"], "@tune"))

    assert_error(response, 422, "step_reference", "params.model", "'@tune' names a pipeline step", "POST /pipelines")


def test_another_tenants_pipeline_is_not_found(client, auth, other_auth, labelled, unlabelled, tiny_model):
    pipeline = submit_pipeline(client, auth, three_steps(labelled, unlabelled, tiny_model))

    for method, path in (("get", ""), ("get", "/events"), ("post", "/cancel"), ("post", "/retry")):
        response = getattr(client, method)(f"{API}/pipelines/{pipeline['id']}{path}", headers=other_auth)
        assert_error(response, 404, "pipeline_not_found", f"pipeline {pipeline['id']} not found")


def fail_first_step(app, pipeline: dict) -> None:
    """End the pipeline as a failed first step does: the steps after it are cancelled."""
    from db.services.jobs import fail_queued_job

    with app.extensions["nightshift"].session_factory() as session, session.begin():
        assert fail_queued_job(session, pipeline["steps"][0]["job"]["id"], code="out_of_memory",
                               reason="the batch did not fit in memory")


def test_a_retry_runs_the_steps_that_did_not_succeed_as_new_jobs_and_keeps_the_history(
        app, client, auth, labelled, unlabelled, tiny_model, queue_length):
    pipeline = submit_pipeline(client, auth, three_steps(labelled, unlabelled, tiny_model))
    assert_error(client.post(f"{API}/pipelines/{pipeline['id']}/retry", headers=auth), 409, "pipeline_not_ended",
                 "'tune'", "cancel the pipeline")
    fail_first_step(app, pipeline)
    before = client.get(f"{API}/pipelines/{pipeline['id']}", headers=auth).get_json()
    assert [s["job"]["status"] for s in before["steps"]] == ["failed", "cancelled", "cancelled"]
    waiting = queue_length("gpu")

    response = client.post(f"{API}/pipelines/{pipeline['id']}/retry", headers=auth)

    assert response.status_code == 202, response.get_data(as_text=True)
    body = response.get_json()
    assert body["status"] == "queued" and body["id"] == pipeline["id"]
    assert [(s["name"], s["after"], s["job"]["status"]) for s in body["steps"]] == [
        ("tune", None, "queued"), ("check", "tune", "waiting"), ("label", "tune", "waiting")]
    old = {s["name"]: s["job"]["id"] for s in pipeline["steps"]}
    new = {s["name"]: s["job"] for s in body["steps"]}
    assert all(new[name]["id"] > old[name] for name in old)  # new jobs; the ended ones stay as they were
    assert new["check"]["depends_on_id"] == new["label"]["depends_on_id"] == new["tune"]["id"]
    assert new["check"]["params"]["model"] == "@tune"
    assert client.get(f"{API}/jobs/{old['tune']}", headers=auth).get_json()["status"] == "failed"
    assert queue_length("gpu") == waiting + 1  # the new first step's message
    events = client.get(f"{API}/pipelines/{pipeline['id']}/events", headers=auth).get_json()["items"]
    assert {(e["job_id"], e["pipeline_step"]) for e in events} == {*((old[n], n) for n in old),
                                                                   *((new[n]["id"], n) for n in new)}
    assert f"step 'tune' run again: job {old['tune']} failed" in [e["message"] for e in events]
    assert_error(client.post(f"{API}/pipelines/{pipeline['id']}/retry", headers=auth), 409, "pipeline_not_ended")


def test_a_pipeline_whose_steps_all_succeeded_has_nothing_to_retry(app, client, auth, labelled, unlabelled,
                                                                     tiny_model):
    from sqlalchemy import update

    from db.models import Job

    pipeline = submit_pipeline(client, auth, three_steps(labelled, unlabelled, tiny_model))
    with app.extensions["nightshift"].session_factory() as session, session.begin():
        session.execute(update(Job).where(Job.pipeline_id == pipeline["id"]).values(status="succeeded"))

    assert_error(client.post(f"{API}/pipelines/{pipeline['id']}/retry", headers=auth), 409, "nothing_to_retry",
                 "every step", "succeeded")


def test_a_retry_is_refused_when_a_step_names_data_deleted_since(app, client, auth, labelled, unlabelled, tiny_model):
    pipeline = submit_pipeline(client, auth, three_steps(labelled, unlabelled, tiny_model))
    fail_first_step(app, pipeline)
    assert client.delete(f"{API}/datasets/{unlabelled['id']}", headers=auth).status_code == 204

    response = client.post(f"{API}/pipelines/{pipeline['id']}/retry", headers=auth)

    assert_error(response, 422, "dataset_not_found", "steps[2] ('label')", f"dataset {unlabelled['id']} not found")
    steps = client.get(f"{API}/pipelines/{pipeline['id']}", headers=auth).get_json()["steps"]
    assert [s["job"]["id"] for s in steps] == [s["job"]["id"] for s in pipeline["steps"]]  # nothing was added


def test_two_retries_at_once_run_the_steps_again_once(app, client, auth, labelled, unlabelled, tiny_model):
    import threading

    pipeline = submit_pipeline(client, auth, three_steps(labelled, unlabelled, tiny_model))
    fail_first_step(app, pipeline)
    start, statuses = threading.Barrier(2), []

    def retry() -> None:
        with app.test_client() as own:
            start.wait()
            statuses.append(own.post(f"{API}/pipelines/{pipeline['id']}/retry", headers=auth).status_code)

    threads = [threading.Thread(target=retry) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sorted(statuses) == [202, 409]
    jobs = client.get(f"{API}/jobs?limit=100", headers=auth).get_json()["items"]
    assert len([job for job in jobs if job["pipeline_id"] == pipeline["id"]]) == 6  # three steps, each run twice
