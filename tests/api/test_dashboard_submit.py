"""The dashboard's new-job form: fields from the parameter models, the API's checks beside each field."""

from __future__ import annotations

import re

import pytest

from tests.api.helpers import API
from tests.api.test_dashboard import log_in
from tests.conftest import make_token


def fields_of(page: str) -> list[str]:
    return re.findall(r'data-field="([^"]+)"', page)


@pytest.mark.parametrize(("kind", "task", "expected"), [
    ("finetune", "text-classification", {"base_model", "train_dataset_id", "epochs", "freeze_base"}),
    ("batch_inference", "translation", {"model", "dataset_id", "generation"}),
    ("evaluate", "question-answering", {"model", "dataset_id"}),
    ("pretrain", "language-modeling", {"base_model", "train_dataset_id", "objective", "mlm_probability", "text_column"}),
])
def test_the_form_shows_the_parameters_of_each_kind_and_task(client, auth, kind, task, expected):
    log_in(client, auth)
    page = client.get(f"/jobs/new?kind={kind}&task={task}").text
    assert expected <= set(fields_of(page))
    assert f'<input type="hidden" name="task" value="{task}">' in page


def test_a_valid_form_queues_the_job_like_the_api(client, auth, labelled, tiny_model):
    csrf = log_in(client, auth)
    form = {"csrf_token": csrf, "kind": "finetune", "task": "text-classification", "action": "submit",
            "base_model": str(tiny_model), "train_dataset_id": str(labelled["id"]), "epochs": "1", "learning_rate": "1e-4",
            "precision": "auto", "priority": "7"}

    response = client.post("/jobs/new", data=form)

    assert response.status_code == 302
    job_id = int(response.headers["Location"].rsplit("/", 1)[1])
    job = client.get(f"{API}/jobs/{job_id}", headers=auth).get_json()
    assert (job["status"], job["priority"]) == ("queued", 7)
    assert job["params"]["epochs"] == 1.0 and job["params"]["learning_rate"] == 1e-4
    assert job["params"]["freeze_base"] is False and job["params"]["batch_size"] == 16  # unchecked box, default


def test_a_pretrain_form_queues_a_language_modeling_job(client, auth, unlabelled, tiny_model):
    csrf = log_in(client, auth)
    page = client.get("/jobs/new?kind=pretrain&task=text-classification").text  # pretrain has one task
    assert '<input type="hidden" name="task" value="language-modeling">' in page
    form = {"csrf_token": csrf, "kind": "pretrain", "task": "language-modeling", "action": "submit",
            "base_model": str(tiny_model), "train_dataset_id": str(unlabelled["id"]), "text_column": "review",
            "objective": "mlm", "mlm_probability": "0.2", "precision": "auto"}

    response = client.post("/jobs/new", data=form)

    assert response.status_code == 302, response.text
    job = client.get(f"{API}/jobs/{int(response.headers['Location'].rsplit('/', 1)[1])}", headers=auth).get_json()
    assert (job["kind"], job["task"], job["params"]["objective"]) == ("pretrain", "language-modeling", "mlm")
    assert job["params"]["mlm_probability"] == 0.2 and job["params"]["freeze_base"] is False


def test_errors_are_shown_next_to_their_fields_and_the_values_kept(client, auth, labelled, tiny_model):
    csrf = log_in(client, auth)
    form = {"csrf_token": csrf, "kind": "finetune", "task": "text-classification", "action": "submit",
            "base_model": str(tiny_model), "train_dataset_id": str(labelled["id"]), "epochs": "-2",
            "learning_rate": "fast", "precision": "auto"}

    response = client.post("/jobs/new", data=form)

    assert response.status_code == 422
    page = response.text
    assert 'data-testid="error-epochs"' in page and 'data-testid="error-learning_rate"' in page
    assert 'value="fast"' in page  # what the user typed stays in the field
    assert client.get(f"{API}/jobs", headers=auth).get_json()["items"] == []


def test_a_check_of_the_service_lands_on_its_field(client, auth, tiny_model):
    csrf = log_in(client, auth)
    form = {"csrf_token": csrf, "kind": "evaluate", "task": "text-classification", "action": "submit",
            "model": str(tiny_model), "dataset_id": "999"}
    response = client.post("/jobs/new", data=form)
    assert response.status_code == 422
    assert re.search(r'data-testid="error-dataset_id">[^<]*999', response.text)


def test_bad_json_in_a_nested_field_is_named(client, auth, labelled):
    csrf = log_in(client, auth)
    form = {"csrf_token": csrf, "kind": "batch_inference", "task": "translation", "action": "submit",
            "model": "m", "dataset_id": str(labelled["id"]), "generation": "{num_beams: 2"}
    response = client.post("/jobs/new", data=form)
    assert response.status_code == 422 and 'data-testid="error-generation">not valid JSON' in response.text


def test_a_viewer_cannot_open_the_form(app, client):
    log_in(client, make_token(app, "acme", role="viewer"))
    assert client.get("/jobs/new").status_code == 403
    assert 'data-testid="new-job-link"' not in client.get("/jobs").text
