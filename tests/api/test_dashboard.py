"""The dashboard's pages through Flask's test client: login, CSRF, jobs list, job page, viewer role.

tests/e2e/test_dashboard_browser.py drives the same pages in a real browser against a running stack.
"""

from __future__ import annotations

import html
import re

import pytest
from sqlalchemy import update

from db.base import utcnow
from db.models import ApiToken, Job
from db.services.jobs import create_job
from db.services.registry import record_evaluation, register_model
from db.services.tenants import get_or_create_tenant
from tests.api.helpers import API, evaluate_body, finetune_body, submit
from tests.conftest import make_token


def raw_token(header: dict[str, str]) -> str:
    return header["Authorization"].removeprefix("Bearer ")


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def log_in(client, header: dict[str, str]) -> str:
    """Log the test client in with the token of `header`; return the session's CSRF token."""
    response = client.post("/login", data={"token": raw_token(header), "csrf_token": csrf_of(client.get("/login").text)})
    assert response.status_code == 302, response.text
    return csrf_of(client.get("/jobs").text)


def test_pages_send_a_browser_without_a_session_to_the_login(client):
    response = client.get("/jobs?status=running")
    assert response.status_code == 302 and response.headers["Location"] == "/login?next=/jobs?status%3Drunning"
    assert client.get("/").status_code == 302
    assert "API token" in client.get("/login").text


def test_a_wrong_token_is_refused_next_to_the_field(client):
    page = client.get("/login").text
    response = client.post("/login", data={"token": "ns_wrong", "csrf_token": csrf_of(page)})
    assert response.status_code == 401
    assert 'id="token-error"' in response.text and "unknown or revoked" in response.text
    assert client.get("/jobs").status_code == 302


def test_login_follows_next_only_within_the_site(client, auth):
    for target, expected in (("/jobs?kind=evaluate", "/jobs?kind=evaluate"), ("https://evil.example/", "/jobs"),
                             ("//evil.example/x", "/jobs")):
        csrf = csrf_of(client.get("/login").text)
        response = client.post(f"/login?next={target}", data={"token": raw_token(auth), "csrf_token": csrf})
        assert response.headers["Location"] == expected


def test_a_form_without_its_csrf_token_is_refused_and_changes_nothing(client, auth, queued_job):
    log_in(client, auth)
    response = client.post(f"/jobs/{queued_job['id']}/cancel")
    assert response.status_code == 400 and "CSRF token is missing" in response.text and "Reload the page" in response.text
    assert client.get(f"{API}/jobs/{queued_job['id']}", headers=auth).get_json()["status"] == "queued"


def test_revoking_the_token_ends_the_session(app, client, auth):
    log_in(client, auth)
    assert client.get("/jobs").status_code == 200
    with app.extensions["nightshift"].session_factory.begin() as session:
        session.execute(update(ApiToken).values(revoked_at=utcnow()))
    assert client.get("/jobs").status_code == 302


def test_logout(client, auth):
    csrf = log_in(client, auth)
    assert client.post("/logout", data={"csrf_token": csrf}).headers["Location"] == "/login"
    assert client.get("/jobs").status_code == 302


def test_jobs_page_lists_filters_and_shows_the_queue_position(client, auth, labelled, tiny_model):
    first = submit(client, auth, evaluate_body(labelled["id"], tiny_model))["id"]
    second = submit(client, auth, evaluate_body(labelled["id"], tiny_model))["id"]
    client.post(f"{API}/jobs/{first}/cancel", headers=auth)
    log_in(client, auth)

    page = client.get("/jobs").text
    assert page.index(f'data-job="{second}"') < page.index(f'data-job="{first}"')  # newest first
    assert "#1 in queue" in page and 'hx-trigger="every 2s"' in page
    table = client.get("/jobs/table?status=cancelled").text
    assert f'data-job="{first}"' in table and f'data-job="{second}"' not in table
    assert 'hx-get="/jobs/table?status=cancelled"' in table  # the poll keeps the filters
    assert "No jobs match these filters" in client.get("/jobs?task=translation").text


def test_a_scheduled_job_shows_when_it_starts(client, auth, labelled, tiny_model):
    job = submit(client, auth, {**evaluate_body(labelled["id"], tiny_model), "not_before": "2099-01-01T22:00:00Z"})
    log_in(client, auth)

    page = client.get("/jobs").text
    assert f'data-job="{job["id"]}"' in page and "starts at 2099-01-01 22:00 UTC" in page
    assert "starts at 2099-01-01 22:00 UTC" in client.get(f"/jobs/{job['id']}").text
    assert f'data-job="{job["id"]}"' in client.get("/jobs/table?status=scheduled").text


def test_a_paused_job_shows_when_it_resumes_and_its_window(app, client, auth, labelled, tiny_model):
    from datetime import datetime

    from sqlalchemy import update

    from db.models import Job

    job = submit(client, auth, {**finetune_body(labelled["id"], tiny_model), "not_before": "nightly",
                                "pause_outside_window": True})
    with app.extensions["nightshift"].session_factory.begin() as session:  # what a pause leaves in the row
        session.execute(update(Job).where(Job.id == job["id"]).values(
            status="scheduled", started_at=datetime(2099, 1, 1, 23), not_before=datetime(2099, 1, 2, 22)))
    log_in(client, auth)
    page = client.get(f"/jobs/{job['id']}").text
    assert "paused: resumes at 2099-01-02 22:00 UTC (keeps to window 'nightly')" in page


def test_jobs_page_pages_by_cursor(app, client, auth):
    with app.extensions["nightshift"].session_factory.begin() as session:
        tenant = get_or_create_tenant(session, "acme")
        ids = [create_job(session, tenant_id=tenant.id, kind="evaluate", task="text-classification",
                          params={"model": "m", "dataset_id": 1}, queue="cpu")[0].id for _ in range(53)]
    log_in(client, auth)
    page = client.get("/jobs").text
    shown = [int(i) for i in re.findall(r'data-job="(\d+)"', page)]
    assert shown == sorted(ids, reverse=True)[:50]
    older = re.search(r'href="(/jobs\?cursor=\d+)" rel="next"', page).group(1)
    rest = [int(i) for i in re.findall(r'data-job="(\d+)"', client.get(older).text)]
    assert rest == sorted(ids, reverse=True)[50:]


def test_job_page_shows_parameters_timeline_commands_and_cancels(client, auth, queued_job):
    csrf = log_in(client, auth)
    page = html.unescape(client.get(f"/jobs/{queued_job['id']}").text)
    assert '"dataset_id"' in page and "evaluate job queued" in page
    assert 'curl -s -H "Authorization: Bearer $TOKEN"' in page and "/api/v1/jobs -d" in page
    assert "nightshift submit evaluate --task text-classification" in page
    assert 'data-testid="cancel"' in page and 'data-testid="retry"' not in page

    response = client.post(f"/jobs/{queued_job['id']}/cancel", data={"csrf_token": csrf})

    assert response.status_code == 302
    page = client.get(response.headers["Location"]).text
    assert "cancel requested" in page and 'data-testid="retry"' in page
    assert client.get(f"{API}/jobs/{queued_job['id']}", headers=auth).get_json()["status"] == "cancelled"


def test_retry_from_the_job_page_opens_the_new_job(client, auth, queued_job):
    csrf = log_in(client, auth)
    client.post(f"/jobs/{queued_job['id']}/cancel", data={"csrf_token": csrf})
    response = client.post(f"/jobs/{queued_job['id']}/retry", data={"csrf_token": csrf})
    new_id = int(response.headers["Location"].rsplit("/", 1)[1])
    assert new_id != queued_job["id"]
    assert f"queued as a retry of job {queued_job['id']}" in client.get(f"/jobs/{new_id}").text


def test_the_evaluation_shows_per_class_metrics_and_the_confusion_matrix(app, client, auth, labelled):
    with app.extensions["nightshift"].session_factory.begin() as session:
        tenant = get_or_create_tenant(session, "acme")
        model = register_model(session, tenant_id=tenant.id, name="sentiment", task="text-classification",
                               base_model="tiny", label_names=["neg", "pos"], path="/nowhere")
        metrics = {"accuracy": 0.75, "f1_macro": 0.7333,
                   "per_class": {"neg": {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 2},
                                 "pos": {"precision": 0.6667, "recall": 1.0, "f1": 0.8, "support": 2}},
                   "confusion_matrix": {"labels": ["neg", "pos"], "matrix": [[1, 1], [0, 2]]}}
        evaluation = record_evaluation(session, tenant_id=tenant.id, model_artifact_id=model.id,
                                       model_ref="sentiment:1", dataset_id=labelled["id"], metrics=metrics)
        job, _ = create_job(session, tenant_id=tenant.id, kind="evaluate", task="text-classification",
                            params={"model": "sentiment", "dataset_id": labelled["id"]}, queue="cpu")
        session.execute(update(Job).where(Job.id == job.id).values(
            status="succeeded", result={"evaluation_id": evaluation.id}, finished_at=utcnow()))
        job_id = job.id
    log_in(client, auth)

    page = client.get(f"/jobs/{job_id}").text

    assert "<dd>0.7500</dd>" in page and "<td>0.667</td>" in page  # headline and per-class figures
    matrix = page[page.index('data-testid="confusion-matrix"'):]
    cells = re.findall(r'<td class="(diagonal|off)"\s+style="--heat: ([\d.]+)">(\d+)</td>', matrix)
    assert [(kind, int(value)) for kind, _heat, value in cells] == [("diagonal", 1), ("off", 1), ("off", 0), ("diagonal", 2)]
    assert [float(heat) for _kind, heat, _value in cells] == [0.5, 0.5, 0.0, 1.0]
    assert 'hx-trigger="every 2s"' not in page.split('id="job-live"')[1].split(">")[0]  # an ended job stops polling


def test_metrics_feed_the_chart_after_a_cursor(app, client, auth, queued_job):
    from db.services.jobs import add_event

    with app.extensions["nightshift"].session_factory.begin() as session:
        for step, loss in ((10, 0.9), (20, 0.5)):
            add_event(session, queued_job["id"], "metric", step=step, data={"loss": loss, "learning_rate": 1e-4})
    log_in(client, auth)
    page = client.get(f"/jobs/{queued_job['id']}/metrics").get_json()
    assert [(item["step"], item["data"]["loss"]) for item in page["items"]] == [(10, 0.9), (20, 0.5)]
    again = client.get(f"/jobs/{queued_job['id']}/metrics?after={page['next_cursor']}").get_json()
    assert again == {"items": [], "next_cursor": page["next_cursor"]}


def test_another_tenants_job_is_not_found(app, client, other_auth, queued_job):
    log_in(client, other_auth)
    for path in ("", "/live", "/metrics", "/output"):
        response = client.get(f"/jobs/{queued_job['id']}{path}")
        assert response.status_code == 404, path
    assert f'data-job="{queued_job["id"]}"' not in client.get("/jobs").text


def test_a_viewer_sees_no_write_buttons_and_cannot_post(app, client, queued_job):
    viewer = make_token(app, "acme", role="viewer")
    csrf = log_in(client, viewer)
    page = client.get(f"/jobs/{queued_job['id']}").text
    assert "acme · viewer" in page
    assert 'data-testid="cancel"' not in page and 'data-testid="retry"' not in page
    response = client.post(f"/jobs/{queued_job['id']}/cancel", data={"csrf_token": csrf})
    assert response.status_code == 403 and "read-only" in response.text
    assert client.post(f"/jobs/{queued_job['id']}/retry", data={"csrf_token": csrf}).status_code == 403


@pytest.mark.parametrize("path", ["/jobs/999", "/no-such-page"])
def test_unknown_pages_answer_an_html_404(client, auth, path):
    log_in(client, auth)
    response = client.get(path)
    assert response.status_code == 404 and response.mimetype == "text/html" and "Back to the jobs" in response.text
