"""LoRA fine-tunes at submit: bad adapter options are 422 naming the field, before any job row exists."""

from __future__ import annotations

import pytest

from db.services.registry import register_model
from db.services.tenants import get_or_create_tenant
from tests.api.helpers import API, assert_error, finetune_body, submit
from tests.api.test_jobs_refused import _no_job_was_created


@pytest.mark.parametrize(("lora", "field", "says"), [
    ({"r": 0}, "params.lora.r", "greater than or equal to 1"),
    ({"dropout": 1.5}, "params.lora.dropout", "less than 1"),
    ({"target_modules": []}, "params.lora.target_modules", "at least 1 item"),
    ({"rank": 8}, "params.lora.rank", "Extra inputs are not permitted"),
])
def test_bad_lora_options_are_422_naming_the_field(app, client, auth, labelled, tiny_model, lora, field, says):
    response = client.post(f"{API}/jobs", headers=auth, json=finetune_body(labelled["id"], tiny_model, lora=lora))
    error = assert_error(response, 422, "invalid_input")
    fields = {f["field"]: f for f in error["details"]["fields"]}
    assert field in fields and says in str(fields[field]), error
    _no_job_was_created(app)


def test_lora_with_freezing_is_422_saying_what_to_drop(app, client, auth, labelled, tiny_model):
    body = finetune_body(labelled["id"], tiny_model, lora={"r": 8}, freeze_layers=1)
    assert_error(client.post(f"{API}/jobs", headers=auth, json=body), 422, "invalid_input",
                 "lora already keeps every weight of the base model fixed", "drop freeze_layers")
    _no_job_was_created(app)


def test_a_target_module_the_base_model_lacks_is_422_listing_its_linear_layers(app, client, auth, labelled,
                                                                              tiny_model):
    body = finetune_body(labelled["id"], tiny_model, lora={"target_modules": ["query", "c_attn"]})
    error = assert_error(client.post(f"{API}/jobs", headers=auth, json=body), 422, "unknown_target_module",
                         "params.lora.target_modules: c_attn is not a linear layer of a bert model", "query, key, value")
    assert error["details"]["field"] == "params.lora.target_modules" and error["details"]["unknown"] == ["c_attn"]
    _no_job_was_created(app)


def test_an_adapter_as_the_base_of_a_lora_fine_tune_is_422(app, client, auth, labelled, tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    with app.extensions["nightshift"].session_factory.begin() as session:
        tenant = get_or_create_tenant(session, "acme")
        register_model(session, tenant_id=tenant.id, name="tuned", task="text-classification",
                       base_model="tiny:1", label_names=["neg", "pos"], path=str(tmp_path))
    body = finetune_body(labelled["id"], "tuned", lora={"r": 4})
    assert_error(client.post(f"{API}/jobs", headers=auth, json=body), 422, "adapter_as_base",
                 "params.base_model: model tuned:1 is a LoRA adapter of tiny:1")
    _no_job_was_created(app)


def test_a_lora_fine_tune_is_accepted_with_its_defaults(client, auth, labelled, tiny_model):
    job = submit(client, auth, finetune_body(labelled["id"], tiny_model, lora={"r": 4}, merge_adapter=True))
    assert job["status"] == "queued"
    assert job["params"]["lora"] == {"r": 4, "alpha": 16.0, "dropout": 0.05, "target_modules": None,
                                     "train_head": True}


def _register(app, name: str, path, *, task: str = "text-classification", adapter: bool = True) -> None:
    (path / "adapter_config.json").write_text("{}")
    if adapter:
        (path / "nightshift_adapter.json").write_text('{"base_model": "tiny:1", "r": 4, "adapter_bytes": 10}')
    with app.extensions["nightshift"].session_factory.begin() as session:
        tenant = get_or_create_tenant(session, "acme")
        register_model(session, tenant_id=tenant.id, name=name, task=task, base_model="tiny:1",
                       label_names=["neg", "pos"], path=str(path))


def test_a_merge_of_a_registered_adapter_is_queued_on_the_evaluation_queue(app, client, auth, tmp_path):
    _register(app, "tuned", tmp_path)
    job = submit(client, auth, {"kind": "merge", "params": {"model": "tuned", "model_name": "tuned-full"}})
    assert (job["kind"], job["task"], job["status"]) == ("merge", "text-classification", "queued")
    assert job["params"] == {"model": "tuned", "model_name": "tuned-full"}


@pytest.mark.parametrize(("model", "code", "says"), [
    ("full", "not_an_adapter", "params.model: model full:1 is a full model already; a merge folds a LoRA adapter"),
    ("/no/such/dir", "unknown_model", "params.model: "),
    ("@tune", "step_reference", "only a step of a pipeline (POST /pipelines) can use the model an earlier step"),
])
def test_a_merge_of_anything_but_an_adapter_is_422(app, client, auth, tmp_path, model, code, says):
    _register(app, "full", tmp_path, adapter=False)
    response = client.post(f"{API}/jobs", headers=auth, json={"kind": "merge", "params": {"model": model}})
    error = assert_error(response, 422, code, says)
    assert error["details"]["field"] == "params.model"
    _no_job_was_created(app)


def test_a_local_full_model_directory_is_not_an_adapter_to_merge(app, client, auth, tiny_model):
    response = client.post(f"{API}/jobs", headers=auth, json={"kind": "merge", "params": {"model": str(tiny_model)}})
    assert_error(response, 422, "not_an_adapter", f"params.model: '{tiny_model}' is not a registered model")
    _no_job_was_created(app)


def test_a_merge_for_another_task_than_the_adapters_is_422(app, client, auth, tmp_path):
    _register(app, "tagger", tmp_path, task="token-classification")
    response = client.post(f"{API}/jobs", headers=auth, json={"kind": "merge", "params": {"model": "tagger"}})
    assert_error(response, 422, "wrong_task", "model tagger:1 is a token-classification model",
                 "submit it with task=token-classification")
    _no_job_was_created(app)
