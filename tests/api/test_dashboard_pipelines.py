"""The dashboard's pipeline pages through Flask's test client: the list, a pipeline in each state, Cancel,
the new-pipeline form, a step's job page, the viewer role and another tenant."""

from __future__ import annotations

import html
import re

import pytest
from sqlalchemy import update

from db.base import utcnow
from db.models import Job
from db.services.pipelines import advance
from tests.api.helpers import API
from tests.api.test_dashboard import log_in
from tests.api.test_pipelines import submit_pipeline, three_steps
from tests.conftest import make_token


@pytest.fixture
def pipeline(client, auth, labelled, unlabelled, tiny_model) -> dict:
    """A submitted pipeline: tune (queued), then check and label (waiting for tune)."""
    return submit_pipeline(client, auth, three_steps(labelled, unlabelled, tiny_model))


def job_ids(pipeline: dict) -> dict[str, int]:
    return {step["name"]: step["job"]["id"] for step in pipeline["steps"]}


def set_jobs(app, ids, **values) -> None:
    with app.extensions["nightshift"].session_factory.begin() as session:
        session.execute(update(Job).where(Job.id.in_(ids)).values(**values))


def steps_shown(page: str) -> dict[str, str]:
    """Return {step name: status} as the page's chain of steps shows them."""
    return dict((name, status) for status, name in re.findall(r'<article class="step (\w+)" id="step-([\w.-]+)"', page))


def polls(page: str) -> bool:
    return "hx-get" in page.split('id="pipeline-live"')[1].split(">")[0]


def test_a_queued_pipeline_in_the_list_and_on_its_page(client, auth, pipeline):
    log_in(client, auth)
    ids = job_ids(pipeline)

    listing = client.get("/pipelines").text
    row = listing[listing.index(f'data-pipeline="{pipeline["id"]}"'):]
    assert "nightly" in row and '<span class="status queued" data-testid="status">queued</span>' in row
    assert re.findall(r'data-status="(\w+)">([\w.-]+)</a>', row) == [("queued", "tune"), ("waiting", "check"),
                                                                      ("waiting", "label")]
    assert 'class="here">Pipelines</a>' in listing and 'data-testid="new-pipeline-link"' in listing
    assert f'data-pipeline="{pipeline["id"]}"' in client.get("/pipelines/table").text

    page = html.unescape(client.get(f"/pipelines/{pipeline['id']}").text)
    assert steps_shown(page) == {"tune": "queued", "check": "waiting", "label": "waiting"}
    assert re.findall(r'data-testid="step-after">(?:after <a href="#step-\w+">(\w+)</a>|starts at once)', page) == [
        "", "tune", "tune"]  # tune first; check and label both branch off it
    assert f"waiting for job #{ids['tune']} to succeed" in page and "#1 in queue" in page
    assert page.count('class="arrow"') == 1  # two columns: tune, then check and label
    timeline = page[page.index('data-testid="events"'):]
    assert re.search(r'<tr class="info" data-step="check">.*?>check</a></td>\s*<td>status</td>'
                     r"<td>waiting for step 'tune'", timeline, re.DOTALL)
    assert 'data-testid="cancel-pipeline"' in page and polls(page)
    assert "0.0% · 0/3 steps succeeded" in page


def test_a_running_pipeline_shows_its_steps_progress(app, client, auth, pipeline):
    tune = job_ids(pipeline)["tune"]
    set_jobs(app, [tune], status="running", started_at=utcnow(), progress_fraction=0.5, progress_stage="training",
             progress_done=5, progress_total=10)
    csrf = log_in(client, auth)

    page = client.get(f"/pipelines/{pipeline['id']}/live").text

    assert '<span class="status running" data-testid="pipeline-status">running</span>' in page
    assert steps_shown(page)["tune"] == "running"
    assert "50.0% · training · 5/10" in page and "16.7% · 0/3 steps succeeded" in page
    assert polls(page) and 'data-testid="cancel-pipeline"' in page

    cancelled = client.get(client.post(f"/pipelines/{pipeline['id']}/cancel", data={"csrf_token": csrf})
                           .headers["Location"]).text  # the running step stops when its worker next beats

    assert "every step that had not ended is cancelled (&#39;tune&#39; stops at its next heartbeat)." in cancelled
    assert steps_shown(cancelled) == {"tune": "running", "check": "cancelled", "label": "cancelled"}
    assert "(cancel requested)" in cancelled and polls(cancelled)


def test_a_succeeded_pipeline_stops_polling_and_offers_no_cancel(app, client, auth, pipeline):
    set_jobs(app, job_ids(pipeline).values(), status="succeeded", progress_fraction=1.0, finished_at=utcnow())
    log_in(client, auth)

    page = client.get(f"/pipelines/{pipeline['id']}").text

    assert '<span class="status succeeded" data-testid="pipeline-status">' in page
    assert set(steps_shown(page).values()) == {"succeeded"} and "100.0% · 3/3 steps succeeded" in page
    assert not polls(page) and 'data-testid="cancel-pipeline"' not in page
    assert 'data-testid="retry-pipeline"' not in page  # nothing to run again
    assert f'data-pipeline="{pipeline["id"]}"' in client.get("/pipelines").text


def test_a_failed_step_shows_its_error_and_the_steps_it_cancelled(app, client, auth, pipeline):
    tune = job_ids(pipeline)["tune"]
    with app.extensions["nightshift"].session_factory.begin() as session:
        session.execute(update(Job).where(Job.id == tune).values(
            status="failed", error_code="bad_data", error_message="row 2 is empty", started_at=utcnow(),
            finished_at=utcnow()))
        advance(session, ended=[tune])
    log_in(client, auth)

    page = html.unescape(client.get(f"/pipelines/{pipeline['id']}").text)

    assert '<span class="status failed" data-testid="pipeline-status">failed</span>' in page
    assert steps_shown(page) == {"tune": "failed", "check": "cancelled", "label": "cancelled"}
    errors = re.findall(r'data-testid="step-error"><strong>(\w+)</strong>: ([^<]+)</p>', page)
    assert errors == [("bad_data", "row 2 is empty"),
                      *[("dependency_not_succeeded", f"not run: step 'tune' (job {tune}) failed: row 2 is empty")] * 2]
    assert page.count('data-testid="never-started"') == 2 and not polls(page)
    listing = client.get("/pipelines").text
    assert re.findall(r'data-status="(\w+)">', listing) == ["failed", "cancelled", "cancelled"]


def test_cancel_from_the_pipeline_page(client, auth, pipeline):
    csrf = log_in(client, auth)

    response = client.post(f"/pipelines/{pipeline['id']}/cancel", data={"csrf_token": csrf})

    assert response.status_code == 302 and response.headers["Location"] == f"/pipelines/{pipeline['id']}"
    page = client.get(response.headers["Location"]).text
    assert f"Pipeline {pipeline['id']}: every step that had not ended is cancelled." in page
    assert '<span class="status cancelled" data-testid="pipeline-status">cancelled</span>' in page
    assert set(steps_shown(page).values()) == {"cancelled"}
    assert not polls(page) and 'data-testid="cancel-pipeline"' not in page
    assert client.get(f"{API}/pipelines/{pipeline['id']}", headers=auth).get_json()["status"] == "cancelled"
    again = client.post(f"/pipelines/{pipeline['id']}/cancel", data={"csrf_token": csrf})
    assert again.status_code == 302  # nothing left to cancel: the same page, no error
    assert client.post(f"/pipelines/{pipeline['id']}/cancel").status_code == 400  # no CSRF token


def test_retry_from_the_page_of_a_cancelled_pipeline(client, auth, pipeline):
    csrf = log_in(client, auth)
    client.post(f"/pipelines/{pipeline['id']}/cancel", data={"csrf_token": csrf})
    assert 'data-testid="retry-pipeline"' in client.get(f"/pipelines/{pipeline['id']}").text

    response = client.post(f"/pipelines/{pipeline['id']}/retry", data={"csrf_token": csrf})

    assert response.status_code == 302 and response.headers["Location"] == f"/pipelines/{pipeline['id']}"
    page = html.unescape(client.get(response.headers["Location"]).text)
    assert f"Pipeline {pipeline['id']}: 'tune', 'check', 'label' run again." in page
    assert steps_shown(page) == {"tune": "queued", "check": "waiting", "label": "waiting"}
    assert polls(page) and 'data-testid="cancel-pipeline"' in page and 'data-testid="retry-pipeline"' not in page
    again = html.unescape(client.get(client.post(f"/pipelines/{pipeline['id']}/retry",
                                                 data={"csrf_token": csrf}).headers["Location"]).text)
    assert "has steps that have not ended ('tune', 'check', 'label')" in again  # said, not a server error
    assert client.post(f"/pipelines/{pipeline['id']}/retry").status_code == 400  # no CSRF token


def test_a_viewer_sees_no_cancel_and_cannot_post(app, client, pipeline):
    csrf = log_in(client, make_token(app, "acme", role="viewer"))
    page = client.get(f"/pipelines/{pipeline['id']}").text
    assert steps_shown(page)["tune"] == "queued"
    assert 'data-testid="cancel-pipeline"' not in page
    assert 'data-testid="new-pipeline-link"' not in client.get("/pipelines").text

    response = client.post(f"/pipelines/{pipeline['id']}/cancel", data={"csrf_token": csrf})

    assert response.status_code == 403 and "read-only" in response.text
    assert client.post(f"/pipelines/{pipeline['id']}/retry", data={"csrf_token": csrf}).status_code == 403
    assert client.get("/pipelines/new").status_code == 403
    assert client.post("/pipelines/new", data={"csrf_token": csrf, "steps": "steps: []"}).status_code == 403
    assert steps_shown(client.get(f"/pipelines/{pipeline['id']}").text)["tune"] == "queued"


def test_another_tenants_pipeline_is_not_found(client, other_auth, pipeline):
    csrf = log_in(client, other_auth)
    for path in ("", "/live"):
        assert client.get(f"/pipelines/{pipeline['id']}{path}").status_code == 404, path
    response = client.post(f"/pipelines/{pipeline['id']}/cancel", data={"csrf_token": csrf})
    assert response.status_code == 404 and "Back to the jobs" in response.text
    assert f'data-pipeline="{pipeline["id"]}"' not in client.get("/pipelines").text
    assert "No pipelines yet" in client.get("/pipelines").text


def test_a_steps_job_page_names_its_pipeline_and_waiting_is_a_status(client, auth, pipeline):
    ids = job_ids(pipeline)
    log_in(client, auth)

    page = html.unescape(client.get(f"/jobs/{ids['check']}").text)

    assert re.search(rf"step 'check' of\s*<a href=\"/pipelines/{pipeline['id']}\">pipeline {pipeline['id']}</a>, "
                     rf"after <a href=\"/jobs/{ids['tune']}\">job #{ids['tune']}</a>", page)
    assert '<span class="status waiting" data-testid="status">waiting</span>' in page
    assert f"waiting for job #{ids['tune']} to succeed" in page and 'data-testid="cancel"' in page
    jobs = client.get("/jobs").text
    assert "<option >waiting</option>" in jobs or "<option>waiting</option>" in jobs
    waiting = html.unescape(client.get("/jobs?status=waiting").text)
    assert sorted(int(i) for i in re.findall(r'data-job="(\d+)"', waiting)) == [ids["check"], ids["label"]]
    assert f"step 'label' of pipeline {pipeline['id']}" in waiting
    first = html.unescape(client.get(f"/jobs/{ids['tune']}").text)
    assert re.search(r"step 'tune' of\s*<a [^>]+>pipeline \d+</a></p>", first)  # the first step waits for none


@pytest.mark.parametrize(("text", "mentions"), [
    ("steps: [", ["not valid YAML or JSON"]),
    ("- just a list", ["write a mapping with `name` (optional) and `steps`"]),
    ("name: x\nsteps: []", ["steps: List should have at least 1 item"]),
    ("steps:\n  - {name: a, kind: evaluate}", ["steps[0].params: Field required"]),
])
def test_the_new_pipeline_form_shows_what_to_fix_beside_the_text(client, auth, text, mentions):
    csrf = log_in(client, auth)

    response = client.post("/pipelines/new", data={"csrf_token": csrf, "steps": text})

    assert response.status_code == 422
    page = html.unescape(response.text)
    errors = page[page.index('data-testid="pipeline-errors"'):page.index("</ul>")]
    for mention in mentions:
        assert mention in errors, errors
    assert f">{text}</textarea>" in page  # kept for the next try


def test_the_new_pipeline_form_submits_through_the_api_checks(client, auth, labelled, unlabelled, tiny_model):
    csrf = log_in(client, auth)
    assert 'data-testid="new-pipeline"' in client.get("/pipelines/new").text
    text = (f"name: from-the-form\nsteps:\n"
            f"  - {{name: tune, kind: finetune, params: {{base_model: '{tiny_model}', "
            f"train_dataset_id: {labelled['id']}, max_steps: 2}}}}\n"
            f"  - {{name: label, kind: batch_inference, params: {{model: '@check', dataset_id: {unlabelled['id']}}}}}\n")

    refused = client.post("/pipelines/new", data={"csrf_token": csrf, "steps": text})

    assert refused.status_code == 422
    assert "steps[1].params.model: &#39;@check&#39; is not a step &#39;label&#39; runs after" in refused.text
    assert client.get(f"{API}/pipelines", headers=auth).get_json()["items"] == []

    response = client.post("/pipelines/new", data={"csrf_token": csrf, "steps": text.replace("@check", "@tune")})

    assert response.status_code == 302, response.text
    created = client.get(f"{API}/pipelines", headers=auth).get_json()["items"]
    assert [(p["name"], [s["name"] for s in p["steps"]]) for p in created] == [("from-the-form", ["tune", "label"])]
    assert response.headers["Location"] == f"/pipelines/{created[0]['id']}"
    assert f"Pipeline {created[0]['id']} submitted." in client.get(response.headers["Location"]).text
