"""Bearer tokens, public endpoints and tenant isolation."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import update

from db.base import utcnow
from db.models import ApiToken
from db.services.registry import record_evaluation, register_model
from db.services.tenants import get_or_create_tenant
from nightshift.cli import _parser, cmd_token
from tests.api.helpers import API, UNLABELLED_CSV, assert_error, batch_body, dataset_ids, evaluate_body, upload
from tests.conftest import make_token

PROTECTED = [
    ("get", "/datasets"),
    ("post", "/datasets"),
    ("get", "/datasets/1"),
    ("delete", "/datasets/1"),
    ("get", "/jobs"),
    ("post", "/jobs"),
    ("get", "/jobs/1"),
    ("post", "/jobs/1/cancel"),
    ("post", "/jobs/1/retry"),
    ("get", "/jobs/1/events"),
    ("get", "/jobs/1/output"),
    ("get", "/models"),
    ("get", "/models/m"),
    ("get", "/evaluations/1"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_missing_token_is_401(client, method, path):
    response = getattr(client, method)(API + path)
    assert_error(response, 401, "unauthorized", "Authorization: Bearer")


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", "ns_token-without-scheme"])
def test_malformed_authorization_header_is_401(client, header):
    response = client.get(f"{API}/jobs", headers={"Authorization": header})
    assert_error(response, 401, "unauthorized", "Bearer")


def test_unknown_token_is_401(client, auth):
    response = client.get(f"{API}/datasets", headers={"Authorization": "Bearer ns_not-a-real-token"})
    assert_error(response, 401, "invalid_token", "unknown or revoked", "`nightshift token --tenant NAME`")


@pytest.mark.parametrize("header", [None, "Bearer ns_not-a-real-token"], ids=["missing", "unknown"])
def test_the_command_the_401_suggests_is_one_the_cli_runs(client, header):
    response = client.get(f"{API}/jobs", headers={"Authorization": header} if header else {})
    [command] = re.findall(r"`([^`]+)`", response.get_json()["error"]["message"])

    program, *argv = command.split()
    args = _parser().parse_args(argv)

    assert program == "nightshift"
    assert (args.func, args.tenant) == (cmd_token, "NAME")


def test_revoked_token_is_401(app, client, auth):
    with app.extensions["nightshift"].session_factory.begin() as session:
        session.execute(update(ApiToken).values(revoked_at=utcnow()))
    assert_error(client.get(f"{API}/datasets", headers=auth), 401, "invalid_token", "revoked")


def test_healthz_is_public(client):
    response = client.get(f"{API}/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "database": "ok", "redis": "ok"}


def test_openapi_is_public(client):
    response = client.get(f"{API}/openapi.json")
    assert response.status_code == 200
    assert response.get_json()["openapi"].startswith("3.")


def test_unknown_path_and_method_answer_json(client, auth):
    assert_error(client.get(f"{API}/no-such-thing", headers=auth), 404, "not_found")
    assert_error(client.put(f"{API}/jobs", headers=auth), 405, "method_not_allowed")


# -- tenant isolation ---------------------------------------------------------------------------
def test_dataset_of_another_tenant_is_404(client, auth, other_auth, labelled):
    url = f"{API}/datasets/{labelled['id']}"
    assert_error(client.get(url, headers=other_auth), 404, "dataset_not_found", str(labelled["id"]))
    assert_error(client.delete(url, headers=other_auth), 404, "dataset_not_found")
    assert dataset_ids(client, other_auth) == []
    assert dataset_ids(client, auth) == [labelled["id"]]
    assert client.get(url, headers=auth).status_code == 200


def test_job_of_another_tenant_is_404(client, auth, other_auth, queued_job):
    job_url = f"{API}/jobs/{queued_job['id']}"
    for response in (
        client.get(job_url, headers=other_auth),
        client.post(f"{job_url}/cancel", headers=other_auth),
        client.get(f"{job_url}/events", headers=other_auth),
        client.get(f"{job_url}/output", headers=other_auth),
    ):
        assert_error(response, 404, "job_not_found", str(queued_job["id"]))
    assert client.get(f"{API}/jobs", headers=other_auth).get_json() == {"items": [], "next_cursor": None}
    assert [j["id"] for j in client.get(f"{API}/jobs", headers=auth).get_json()["items"]] == [queued_job["id"]]
    assert client.get(job_url, headers=auth).get_json()["status"] == "queued"


def test_job_cannot_read_another_tenants_dataset(client, other_auth, labelled, tiny_model):
    response = client.post(f"{API}/jobs", headers=other_auth, json=evaluate_body(labelled["id"], tiny_model))
    error = assert_error(response, 422, "dataset_not_found", "params.dataset_id")
    assert error["details"] == {"field": "params.dataset_id"}


def test_evaluation_and_models_of_another_tenant_are_hidden(app, client, auth, other_auth, labelled):
    with app.extensions["nightshift"].session_factory.begin() as session:
        tenant = get_or_create_tenant(session, "acme")
        model = register_model(session, tenant_id=tenant.id, name="sentiment", task="text-classification",
                               base_model="tiny", label_names=["neg", "pos"], path="/nowhere")
        evaluation = record_evaluation(session, tenant_id=tenant.id, model_artifact_id=model.id,
                                       model_ref="sentiment:1", dataset_id=labelled["id"],
                                       metrics={"accuracy": 0.5})
        evaluation_id = evaluation.id

    url = f"{API}/evaluations/{evaluation_id}"
    assert client.get(url, headers=auth).get_json()["metrics"] == {"accuracy": 0.5}
    assert_error(client.get(url, headers=other_auth), 404, "evaluation_not_found", str(evaluation_id))
    assert [m["name"] for m in client.get(f"{API}/models", headers=auth).get_json()["items"]] == ["sentiment"]
    assert client.get(f"{API}/models", headers=other_auth).get_json() == {"items": []}
    assert_error(client.get(f"{API}/models/sentiment", headers=other_auth), 404, "model_not_found", "sentiment")


def test_registered_model_of_another_tenant_cannot_be_used(app, client, other_auth):
    with app.extensions["nightshift"].session_factory.begin() as session:
        tenant = get_or_create_tenant(session, "acme")
        register_model(session, tenant_id=tenant.id, name="private", task="text-classification",
                       base_model="tiny", label_names=["a"], path="/nowhere")
    dataset = upload(client, other_auth, UNLABELLED_CSV, "t.csv", text_column="review").get_json()
    response = client.post(f"{API}/jobs", headers=other_auth, json=batch_body(dataset["id"], "private"))
    assert_error(response, 422, "unknown_model", "params.model", "'private'")


# -- viewer tokens ------------------------------------------------------------------------------
def _write_routes(app) -> list[tuple[str, str]]:
    """Every (method, path) of the JSON API that changes data, read from the app's URL map."""
    routes = []
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(API):
            for method in sorted(rule.methods - {"GET", "HEAD", "OPTIONS"}):
                routes.append((method, rule.rule.replace("<int:", "<").replace("<job_id>", "{job}")
                               .replace("<dataset_id>", "{dataset}")))
    return routes


def test_a_viewer_reads_its_tenants_data_and_every_write_route_refuses_it(app, client, auth, labelled, queued_job):
    viewer = make_token(app, "acme", role="viewer")
    assert dataset_ids(client, viewer) == [labelled["id"]]
    assert client.get(f"{API}/jobs/{queued_job['id']}", headers=viewer).get_json()["status"] == "queued"

    routes = _write_routes(app)
    assert {("POST", f"{API}/jobs"), ("POST", f"{API}/datasets"), ("DELETE", f"{API}/datasets/{{dataset}}"),
            ("POST", f"{API}/jobs/{{job}}/cancel")} <= set(routes)
    for method, path in routes:
        url = path.format(job=queued_job["id"], dataset=labelled["id"])
        response = client.open(url, method=method, headers=viewer, json={"kind": "evaluate"})
        assert_error(response, 403, "forbidden", "read-only", "`nightshift token --tenant NAME`")

    assert client.get(f"{API}/jobs/{queued_job['id']}", headers=auth).get_json()["status"] == "queued"
    assert dataset_ids(client, auth) == [labelled["id"]]


def test_the_cli_makes_viewer_tokens():
    args = _parser().parse_args(["token", "--tenant", "acme", "--role", "viewer"])
    assert (args.func, args.tenant, args.role) == (cmd_token, "acme", "viewer")
    assert _parser().parse_args(["token"]).role == "member"
