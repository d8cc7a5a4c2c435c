"""`nightshift pipelines` in this process against the real API over HTTP: submit from a file, list,
show, cancel, watch until the end (exit 0, 1, 2) and the steps' events."""

from __future__ import annotations

import json

import pytest

from db.services.pipelines import advance
from nightshift.views import watch_pipeline
from tests.nightshift.test_cli import one_line_error


def steps(dataset_id: int) -> list[dict]:
    return [
        {"name": "tune", "kind": "finetune", "params": {"base_model": "sentiment", "train_dataset_id": dataset_id,
                                                        "max_steps": 2, "model_name": "tuned"}},
        {"name": "check", "kind": "evaluate", "params": {"model": "@tune", "dataset_id": dataset_id}},
        {"name": "label", "after": "tune", "kind": "batch_inference",
         "params": {"model": "@tune", "dataset_id": dataset_id}},
    ]


@pytest.fixture
def pipeline(sdk, labelled, database) -> dict:
    """A submitted pipeline: tune (queued), then check and label (both waiting for tune)."""
    database.model("sentiment")
    return sdk.submit_pipeline(steps(labelled["id"]), name="nightly")


def ids_of(pipeline: dict) -> dict[str, int]:
    return {step["name"]: step["job"]["id"] for step in pipeline["steps"]}


def end_first_step(database, pipeline: dict, status: str, **values) -> None:
    """Make the first step end as a worker would, and its dependents follow as the service makes them."""
    tune = ids_of(pipeline)["tune"]
    if status == "succeeded":  # the model its dependents' "@tune" stands for
        values["model_artifact_id"] = database.model("tuned")
    database.set_job(tune, status=status, progress_fraction=1.0 if status == "succeeded" else 0.5, **values)
    with database.factory.begin() as session:
        advance(session, ended=[tune])


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_submit_a_pipeline_file(run, labelled, database, tmp_path, suffix):
    database.model("sentiment")
    path = tmp_path / f"pipeline.{suffix}"
    if suffix == "json":
        path.write_text(json.dumps({"name": "nightly", "steps": steps(labelled["id"])}))
    else:
        path.write_text(f"""name: nightly
steps:
  - name: tune
    kind: finetune
    params: {{base_model: sentiment, train_dataset_id: {labelled['id']}, max_steps: 2, model_name: tuned}}
  - name: check
    kind: evaluate
    params: {{model: "@tune", dataset_id: {labelled['id']}}}
  - name: label
    after: tune
    kind: batch_inference
    params: {{model: "@tune", dataset_id: {labelled['id']}}}
""")

    result = run("pipelines", "submit", path, "--json")

    assert result.code == 0, result
    body = result.json()
    assert (body["name"], body["status"]) == ("nightly", "queued")
    assert [(s["name"], s["after"], s["job"]["status"]) for s in body["steps"]] == [
        ("tune", None, "queued"), ("check", "tune", "waiting"), ("label", "tune", "waiting")]
    human = run("pipelines", "submit", path, "--name", "renamed")
    assert human.code == 0 and "name      renamed" in human.out and "status    queued" in human.out
    table = human.out.split("\n\n", 1)[1].splitlines()
    assert table[0].split() == ["STEP", "AFTER", "KIND", "TASK", "JOB", "STATUS", "PROGRESS", "STAGE"]
    assert table[2].split()[:6] == ["check", "tune", "evaluate", "text-classification", str(body["id"] + 3 + 1),
                                    "waiting"]  # the second pipeline's second job


def test_a_bad_pipeline_file_is_one_line(run, labelled, database, tmp_path):
    database.model("sentiment")
    path = tmp_path / "pipeline.yaml"
    for text, message in (
        ("steps: [", "is not valid YAML or JSON"),
        ("- name: a", "must hold a mapping with `steps`"),
        ("name: x\nsteps: []", "must hold a mapping with `steps`"),
        ("steps: [{name: a}]\nstages: []", "unknown keys ['stages']; use name and steps"),
        ("steps: [tune]", "steps[0] must be a mapping with name, kind and params"),
        ("steps: [{name: a, kind: evaluate, parameters: {}}]", "steps[0] has unknown keys ['parameters']"),
    ):
        path.write_text(text)
        one_line_error(run("pipelines", "submit", path), message)
    one_line_error(run("pipelines", "submit", tmp_path / "missing.yaml"), "cannot read pipeline file")
    bad = steps(labelled["id"])
    bad[2]["after"] = "nowhere"
    path.write_text(json.dumps({"steps": bad}))
    one_line_error(run("pipelines", "submit", path), "error: unknown_step: steps[2].after: 'nowhere' is not a step")
    assert run("pipelines", "list", "--json").json() == []  # nothing was created


def test_list_show_cancel_and_retry(run, sdk, pipeline, labelled):
    second = sdk.submit_pipeline(steps(labelled["id"])[:1], name="alone")

    assert [p["id"] for p in run("pipelines", "list", "--json").json()] == [second["id"], pipeline["id"]]
    assert [p["id"] for p in run("pipelines", "--limit", "1", "--json").json()] == [second["id"]]
    assert [p["id"] for p in run("pipelines", "list", "--all", "--json").json()] == [second["id"], pipeline["id"]]
    listed = run("pipelines").out.splitlines()  # alone: the list
    assert listed[0].split() == ["ID", "NAME", "STATUS", "PROGRESS", "STEPS", "CREATED"]
    assert listed[2].split()[:7] == [str(pipeline["id"]), "nightly", "queued", "0.0%", "tune:queued",
                                     "check:waiting", "label:waiting"]
    assert run("pipelines", "show", pipeline["id"], "--json").json() == sdk.pipeline(pipeline["id"])
    shown = run("pipelines", "show", pipeline["id"]).out
    assert "status    queued" in shown and "label  tune   batch_inference" in shown

    cancelled = run("pipelines", "cancel", pipeline["id"])

    assert cancelled.code == 0 and "status    cancelled" in cancelled.out
    assert [s["job"]["status"] for s in sdk.pipeline(pipeline["id"])["steps"]] == ["cancelled"] * 3
    one_line_error(run("pipelines", "show", 999), "error: pipeline_not_found: pipeline 999 not found")
    one_line_error(run("pipelines", "cancel", 999), "error: pipeline_not_found: pipeline 999 not found")

    retried = run("pipelines", "retry", pipeline["id"])

    assert retried.code == 0 and "status    queued" in retried.out
    assert [s["job"]["status"] for s in sdk.pipeline(pipeline["id"])["steps"]] == ["queued", "waiting", "waiting"]
    one_line_error(run("pipelines", "retry", pipeline["id"]),
                   f"error: pipeline_not_ended: pipeline {pipeline['id']} has steps that have not ended")


@pytest.mark.parametrize(("status", "code"), [("succeeded", 0), ("failed", 1), ("cancelled", 2)])
def test_watch_exit_code_says_how_the_pipeline_ended(run, pipeline, database, status, code):
    ids = ids_of(pipeline)
    database.event(ids["tune"], "metric", step=2, data={"loss": 0.125})
    database.event(ids["tune"], "log", "training 3 rows")
    error = {"error_code": "bad_data", "error_message": "row 2 is empty"} if status == "failed" else {}
    end_first_step(database, pipeline, status, progress_stage="training", progress_done=2, progress_total=2, **error)
    if status == "succeeded":  # the released steps run too
        assert [s["job"]["params"]["model"] for s in run("pipelines", "show", pipeline["id"], "--json").json()[
            "steps"][1:]] == ["tuned:1", "tuned:1"]
        for name in ("check", "label"):
            database.set_job(ids[name], status="succeeded", progress_fraction=1.0, progress_done=3, progress_total=3)

    result = run("pipelines", "watch", pipeline["id"], "--interval", "0.05")

    assert result.code == code, result
    assert "tune         log     training 3 rows" in result.out and "loss 0.1250" in result.out
    assert "check        status  waiting for step 'tune'" in result.out
    lines = result.out.strip().splitlines()
    assert lines[-1] == f"pipeline {pipeline['id']} {status}"
    if status != "succeeded":
        reason = f"not run: step 'tune' (job {ids['tune']}) {status}" + (": row 2 is empty" if error else "")
        assert f"step 'check' (job {ids['check']}) cancelled: dependency_not_succeeded: {reason}" in lines
    if error:
        assert f"step 'tune' (job {ids['tune']}) failed: bad_data: row 2 is empty" in lines
    as_json = run("pipelines", "watch", pipeline["id"], "--json")
    events = [json.loads(line) for line in as_json.out.splitlines()]
    assert as_json.code == code and {e["pipeline_step"] for e in events} == {"tune", "check", "label"}
    assert [e["data"] for e in events if e["type"] == "metric"] == [{"loss": 0.125}]


def test_watch_follows_a_running_pipeline_until_it_ends(sdk, pipeline, database, capsys):
    ids = ids_of(pipeline)
    database.set_job(ids["tune"], status="running", progress_fraction=0.5, progress_stage="training",
                     progress_done=1, progress_total=2)
    polls = []

    class Finishing(type(sdk)):
        def pipeline(self, pipeline_id):
            polls.append(current := super().pipeline(pipeline_id))
            if len(polls) == 1:  # the steps move on between two polls
                database.event(ids["tune"], "metric", step=2, data={"loss": 0.5})
                end_first_step(database, current, "succeeded", progress_done=2)
            elif len(polls) == 2:
                for name in ("check", "label"):
                    database.set_job(ids[name], status="succeeded", progress_fraction=1.0, progress_done=3,
                                     progress_total=3)
            return current

    token = sdk.http.headers["Authorization"].split()[1]
    ended = watch_pipeline(Finishing(sdk.url, token), pipeline["id"], interval=0.01)

    assert [p["status"] for p in polls] == ["running", "running", "succeeded"] and ended["status"] == "succeeded"
    out = capsys.readouterr().out
    assert "2/2 steps" in out and "loss 0.5000" in out and "3/3 rows" in out
    assert f"step 'tune' (job {ids['tune']}) succeeded; queued on" in out
    assert out.strip().endswith(f"pipeline {pipeline['id']} succeeded")


def test_events_of_the_steps_and_waiting_jobs(run, pipeline, database):
    ids = ids_of(pipeline)
    database.event(ids["label"], "log", "a note on label")

    lines = run("pipelines", "events", pipeline["id"]).out.splitlines()

    assert [line.split()[1] for line in lines] == ["tune", "check", "label", "label"]
    assert lines[-1].split(None, 1)[1] == "label        log     a note on label"
    as_json = [json.loads(line) for line in run("pipelines", "events", pipeline["id"], "--json").out.splitlines()]
    assert [(e["pipeline_step"], e["job_id"]) for e in as_json][-1] == ("label", ids["label"])
    later = run("pipelines", "events", pipeline["id"], "--after", as_json[-2]["id"], "--json").out.splitlines()
    assert [json.loads(line)["message"] for line in later] == ["a note on label"]
    waiting = run("jobs", "list", "--status", "waiting", "--json")
    assert waiting.code == 0 and sorted(j["id"] for j in waiting.json()) == [ids["check"], ids["label"]]
    run("pipelines", "cancel", pipeline["id"])
    followed = run("pipelines", "events", pipeline["id"], "--follow", "--interval", "0.05")  # ended: returns
    assert followed.code == 0 and "cancelled before it started" in followed.out
