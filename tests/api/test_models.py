"""The model registry and evaluation endpoints."""

from __future__ import annotations

from db.services.registry import record_evaluation, register_model
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


def test_evaluations_list_by_model_version_and_dataset(app, client, auth, other_auth, labelled, unlabelled):
    with app.extensions["nightshift"].session_factory.begin() as session:
        tenant = get_or_create_tenant(session, "acme")
        model = {"tenant_id": tenant.id, "task": "text-classification", "base_model": "tiny", "label_names": ["a"],
                 "path": "/nowhere"}
        v1, v2 = (register_model(session, name="sentiment", **model) for _ in range(2))
        other = register_model(session, name="spam", **model)
        ids = [record_evaluation(session, tenant_id=tenant.id, model_artifact_id=m.id, model_ref=f"{m.name}:{m.version}",
                                 dataset_id=d, metrics={"accuracy": 0.5}).id
               for m, d in ((v1, labelled["id"]), (v2, labelled["id"]), (v2, unlabelled["id"]), (other, labelled["id"]))]

    def listed(query: str = "") -> list[int]:
        return [e["id"] for e in client.get(f"{API}/evaluations{query}", headers=auth).get_json()["items"]]

    assert listed() == ids[::-1]
    assert listed("?model=sentiment") == [ids[2], ids[1], ids[0]]
    assert listed("?model=sentiment:2") == [ids[2], ids[1]]
    assert listed("?model=sentiment:x") == [] and listed("?model=nothing") == []
    assert listed(f"?model=sentiment&dataset_id={labelled['id']}") == [ids[1], ids[0]]
    first = client.get(f"{API}/evaluations?limit=3", headers=auth).get_json()
    assert first["next_cursor"] == ids[1] and listed(f"?cursor={first['next_cursor']}") == [ids[0]]
    assert client.get(f"{API}/evaluations", headers=other_auth).get_json() == {"items": [], "next_cursor": None}
    assert_error(client.get(f"{API}/evaluations?dataset_id=0", headers=auth), 422, "invalid_input", "dataset_id")
