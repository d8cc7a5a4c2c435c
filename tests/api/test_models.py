"""The model registry and evaluation endpoints."""

from __future__ import annotations

from db.services.registry import register_model
from db.services.tenants import get_or_create_tenant
from tests.api.helpers import API, assert_error


def test_models_list_starts_empty(client, auth):
    response = client.get(f"{API}/models", headers=auth)
    assert response.status_code == 200
    assert response.get_json() == {"items": []}


def test_unknown_model_name_is_404(client, auth):
    assert_error(client.get(f"{API}/models/unknown", headers=auth), 404, "model_not_found", "'unknown'")


def test_unknown_evaluation_is_404(client, auth):
    assert_error(client.get(f"{API}/evaluations/999", headers=auth), 404, "evaluation_not_found", "999")
    assert_error(client.get(f"{API}/evaluations/{2**70}", headers=auth), 404, "evaluation_not_found")


def test_model_versions_newest_first(app, client, auth):
    with app.extensions["nightshift"].session_factory.begin() as session:
        tenant = get_or_create_tenant(session, "acme")
        for _ in range(2):
            register_model(session, tenant_id=tenant.id, name="sentiment", task="text-classification",
                           base_model="tiny", label_names=["neg", "pos"], path="/nowhere")

    response = client.get(f"{API}/models/sentiment", headers=auth)

    assert response.status_code == 200
    assert [(m["name"], m["version"]) for m in response.get_json()["items"]] == [("sentiment", 2), ("sentiment", 1)]
    assert response.get_json()["items"][0]["label_names"] == ["neg", "pos"]
