"""The dashboard's dataset, model and worker pages through Flask's test client, on a real database."""

from __future__ import annotations

import html
import io
import json
import re

import pytest
from sqlalchemy import update

from db.base import utcnow
from db.models import Job
from db.services.jobs import create_job
from db.services.registry import record_evaluation, register_model
from db.services.tenants import get_or_create_tenant
from db.services.workers import record_heartbeat
from tests.api.helpers import API, LABELLED_CSV, dataset_ids, evaluate_body, submit
from tests.api.test_dashboard import csrf_of, log_in
from tests.conftest import make_token


def post_upload(client, csrf: str, content: bytes, filename: str, **form: str):
    data = {"file": (io.BytesIO(content), filename), "target_file": (io.BytesIO(b""), ""), "csrf_token": csrf, **form}
    return client.post("/datasets", data=data, content_type="multipart/form-data")


# ---- datasets ----------------------------------------------------------------------------------


def test_datasets_list_and_page_show_stats_roles_charts_and_jobs(client, auth, labelled, tiny_model):
    job = submit(client, auth, evaluate_body(labelled["id"], tiny_model))
    log_in(client, auth)
    listing = client.get("/datasets").text
    assert f'data-dataset="{labelled["id"]}"' in listing and "reviews.csv" in listing and "review, sentiment" in listing
    assert 'data-testid="upload-form"' in listing

    page = client.get(f"/datasets/{labelled['id']}").text
    assert '<dd data-testid="rows">3</dd>' in page and "text-classification" in page
    assert re.search(r"<td>review</td><td>text</td>", page) and re.search(r"<td>sentiment</td><td>label</td>", page)
    charts = json.loads(html.unescape(re.search(r'id="dataset-chart-data">(.*?)</script>', page, re.DOTALL).group(1)))
    assert charts["counts"]["Labels"] == {"pos": 2, "neg": 1}
    # "I loved it" (10), "Dull, and far too long" (22), "Fine show" (9) in doubling bins 0-7, 8-15, 16-31
    assert charts["lengths"]["text length (characters)"] == {"edges": [0, 8, 16, 32], "counts": [0, 2, 1]}
    assert 'data-testid="chart-lengths"' in page and "chart-4.6.1.umd.min.js" in page
    assert f'href="/jobs/{job["id"]}"' in page and 'data-testid="delete"' in page


def test_a_token_classification_dataset_charts_tags_and_entities(client, auth):
    conll = b"John B-PER\nlives O\nin O\nParis B-LOC\n\nMary B-PER\nsings O\n"
    csrf = log_in(client, auth)
    response = post_upload(client, csrf, conll, "ner.conll", task="token-classification")
    assert response.status_code == 302, response.text
    charts = json.loads(html.unescape(re.search(r'id="dataset-chart-data">(.*?)</script>',
                                                client.get(response.headers["Location"]).text, re.DOTALL).group(1)))
    assert charts["counts"]["Tags"]["O"] == 3 and charts["counts"]["Entities"] == {"PER": 2, "LOC": 1}
    assert "tokens per row" in charts["lengths"]


def test_upload_from_the_dashboard_stores_the_dataset(client, auth):
    csrf = log_in(client, auth)
    response = post_upload(client, csrf, LABELLED_CSV, "reviews.csv", task="text-classification", name="My reviews",
                           text_column="review", label_column="sentiment")
    assert response.status_code == 302, response.text
    dataset_id = int(response.headers["Location"].rsplit("/", 1)[1])
    assert dataset_ids(client, auth) == [dataset_id]
    page = client.get(response.headers["Location"]).text
    assert "3 rows stored" in page and "My reviews" in page


@pytest.mark.parametrize(("form", "field", "message"), [
    ({"label_column": "stars"}, "label_column", "Column &#39;stars&#39; (label_column) is not in the file"),
    ({"text_column": "x" * 201}, "text_column", "longer than 200 characters"),
    ({"format": "xml"}, "format", "Format &#39;xml&#39; is not supported"),
])
def test_upload_errors_show_next_to_their_field_and_keep_the_values(client, auth, form, field, message):
    csrf = log_in(client, auth)
    response = post_upload(client, csrf, LABELLED_CSV, "reviews.csv", name="Kept name",
                           **{"text_column": "review", "label_column": "sentiment", **form})
    assert response.status_code == 422
    error = re.search(rf'<p class="field-error" id="{field}-error" role="alert">([^<]*)</p>', response.text)
    assert error and message in error.group(1), response.text
    assert 'value="Kept name"' in response.text
    assert dataset_ids(client, auth) == []


def test_an_upload_error_of_the_file_shows_at_the_file(client, auth):
    csrf = log_in(client, auth)
    response = post_upload(client, csrf, b"review,sentiment\n", "empty.csv", label_column="sentiment",
                           text_column="review")
    assert response.status_code == 422 and 'id="file-error"' in response.text and "no data rows" in response.text
    response = client.post("/datasets", data={"csrf_token": csrf, "name": "n"}, content_type="multipart/form-data")
    assert response.status_code == 422 and 'id="file-error"' in response.text


def test_delete_from_the_dashboard_and_refused_while_a_job_reads_it(client, auth, labelled, tiny_model):
    job = submit(client, auth, evaluate_body(labelled["id"], tiny_model))
    csrf = log_in(client, auth)
    response = client.post(f"/datasets/{labelled['id']}/delete", data={"csrf_token": csrf})
    assert response.headers["Location"] == f"/datasets/{labelled['id']}"
    assert f"used by unfinished jobs [{job['id']}]" in client.get(response.headers["Location"]).text
    client.post(f"{API}/jobs/{job['id']}/cancel", headers=auth)

    response = client.post(f"/datasets/{labelled['id']}/delete", data={"csrf_token": csrf})

    assert response.headers["Location"] == "/datasets"
    assert "deleted" in client.get("/datasets").text and dataset_ids(client, auth) == []
    assert client.get(f"/datasets/{labelled['id']}").status_code == 404


def test_dataset_writes_need_the_csrf_token_and_a_member(app, client, auth, labelled):
    log_in(client, auth)
    assert client.post(f"/datasets/{labelled['id']}/delete").status_code == 400
    assert client.post("/datasets", data={"file": (io.BytesIO(LABELLED_CSV), "r.csv")},
                       content_type="multipart/form-data").status_code == 400
    viewer = make_token(app, "acme", role="viewer")
    client.post("/logout", data={"csrf_token": csrf_of(client.get("/datasets").text)})
    csrf = log_in(client, viewer)
    page = client.get(f"/datasets/{labelled['id']}").text
    assert 'data-testid="delete"' not in page and 'data-testid="upload-form"' not in client.get("/datasets").text
    assert client.post(f"/datasets/{labelled['id']}/delete", data={"csrf_token": csrf}).status_code == 403
    assert post_upload(client, csrf, LABELLED_CSV, "r.csv").status_code == 403
    assert dataset_ids(client, auth) == [labelled["id"]]


def test_another_tenants_dataset_is_not_found(client, other_auth, labelled):
    csrf = log_in(client, other_auth)
    assert client.get(f"/datasets/{labelled['id']}").status_code == 404
    assert client.post(f"/datasets/{labelled['id']}/delete", data={"csrf_token": csrf}).status_code == 404
    assert f'data-dataset="{labelled["id"]}"' not in client.get("/datasets").text
    response = client.get("/datasets/999")
    assert response.status_code == 404 and response.mimetype == "text/html" and "Back to the jobs" in response.text


# ---- models ------------------------------------------------------------------------------------


def _registry(app, dataset_id: int) -> dict:
    """Two versions of `sentiment` and a `baseline`, with evaluations of sentiment:2 and baseline:1."""
    per_class = {"neg": {"precision": 1.0, "recall": 0.5, "f1": 0.6, "support": 2},
                 "pos": {"precision": 0.7, "recall": 1.0, "f1": 0.8, "support": 2}}
    with app.extensions["nightshift"].session_factory.begin() as session:
        tenant = get_or_create_tenant(session, "acme")
        job, _ = create_job(session, tenant_id=tenant.id, kind="finetune", task="text-classification",
                            params={"base_model": "tiny", "train_dataset_id": dataset_id}, queue="cpu")
        fields = {"task": "text-classification", "base_model": "tiny-bert", "label_names": ["neg", "pos"], "path": "/x"}
        one = register_model(session, tenant_id=tenant.id, name="sentiment", metrics={"accuracy": 0.5}, **fields)
        two = register_model(session, tenant_id=tenant.id, name="sentiment", source_job_id=job.id,
                             metrics={"accuracy": 0.75, "f1_macro": 0.7}, **fields)
        base = register_model(session, tenant_id=tenant.id, name="baseline", metrics={"accuracy": 0.6}, **fields)
        record_evaluation(session, tenant_id=tenant.id, model_artifact_id=two.id, model_ref="sentiment:2",
                          dataset_id=dataset_id, metrics={"accuracy": 0.75, "f1_macro": 0.7, "per_class": per_class})
        worse = {label: {**row, "f1": row["f1"] - 0.1} for label, row in per_class.items()}
        record_evaluation(session, tenant_id=tenant.id, model_artifact_id=base.id, model_ref="baseline:1",
                          dataset_id=dataset_id, metrics={"accuracy": 0.5, "f1_macro": 0.6, "per_class": worse})
        return {"job": job.id, "one": one.id}


def test_models_page_groups_versions_with_their_metrics(app, client, auth, labelled):
    ids = _registry(app, labelled["id"])
    log_in(client, auth)
    page = client.get("/models").text
    assert page.index('data-model="baseline"') < page.index('data-model="sentiment"')  # newest model first
    sentiment = page[page.index('data-model="sentiment"'):]
    assert "<th>accuracy</th><th>f1_macro</th>" in sentiment and "tiny-bert" in sentiment
    row = re.search(r'<tr data-version="sentiment:2">(.*?)</tr>', sentiment, re.DOTALL).group(1)
    assert f'href="/jobs/{ids["job"]}"' in row and "<td>0.7500</td><td>0.7000</td>" in row
    first = re.search(r'data-version="sentiment:1">(.*?)</tr>', page, re.DOTALL).group(1)
    assert '<td><span class="muted">–</span></td>' in first  # version 1 has no f1_macro

    model = client.get("/models/sentiment").text
    assert 'data-version="sentiment:2"' in model and 'data-version="baseline:1"' not in model
    assert 'data-testid="evaluations"' in model and f'href="/datasets/{labelled["id"]}"' in model


def test_compare_two_models_on_a_dataset(app, client, auth, labelled):
    _registry(app, labelled["id"])
    log_in(client, auth)
    page = html.unescape(client.get(f"/models/compare?a=baseline&b=sentiment&dataset={labelled['id']}").text)
    assert 'data-testid="comparison"' in page and "sentiment:2" in page
    accuracy = re.search(r'<tr data-metric="accuracy">(.*?)</tr>', page, re.DOTALL).group(1)
    assert "<td>0.5000</td><td>0.7500</td>" in accuracy and '<span class="better">+0.2500</span>' in accuracy
    neg = re.search(r'<tr data-class="neg">(.*?)</tr>', page, re.DOTALL).group(1)
    assert "<td>0.5000</td><td>0.6000</td>" in neg and "+0.1000" in neg

    page = html.unescape(client.get(f"/models/compare?a=sentiment:1&b=sentiment&dataset={labelled['id']}").text)
    assert 'data-testid="no-evaluation"' in page and "sentiment:1</strong> has no evaluation on dataset" in page
    command = f"nightshift submit evaluate --task text-classification model=sentiment:1 dataset_id={labelled['id']}"
    assert command in page

    assert 'data-testid="compare-form"' in client.get("/models/compare").text
    assert client.get(f"/models/compare?a=nope&b=sentiment&dataset={labelled['id']}").status_code == 404
    assert client.get("/models/compare?a=baseline&b=sentiment&dataset=999").status_code == 404


def test_another_tenants_models_are_not_shown(app, client, other_auth, labelled):
    _registry(app, labelled["id"])
    log_in(client, other_auth)
    assert 'data-model="sentiment"' not in client.get("/models").text
    response = client.get("/models/sentiment")
    assert response.status_code == 404 and response.mimetype == "text/html"
    assert client.get(f"/models/compare?a=baseline&b=sentiment&dataset={labelled['id']}").status_code == 404


# ---- workers -----------------------------------------------------------------------------------


def test_workers_page_shows_queues_devices_jobs_and_stale_workers(app, client, auth, other_auth, queued_job):
    from datetime import timedelta

    factory = app.extensions["nightshift"].session_factory
    gpu = {"kind": "cuda", "name": "NVIDIA H200", "count": 1, "memory_bytes": 141 << 30, "cores": 16}
    with factory.begin() as session:
        record_heartbeat(session, "gpu@h1", "h1", 10, ["gpu"], gpu, pool_pids=[11])
        record_heartbeat(session, "cpu@h2", "h2", 20, ["cpu"], {"kind": "cpu", "cores": 4},
                         now=utcnow() - timedelta(minutes=5))
        session.execute(update(Job).where(Job.id == queued_job["id"]).values(status="running", lease_owner="h1:11"))
    log_in(client, auth)
    page = client.get("/workers").text
    assert re.search(r'<tr data-queue="gpu"><td>gpu</td><td>0 <span class="muted">\(0\)</span></td>\s*'
                     r'<td>1 <span class="muted">\(1\)</span></td>', page), page
    gpu_row = re.search(r'<tr data-worker="gpu@h1"\s*>(.*?)</tr>', page, re.DOTALL).group(1)
    assert "NVIDIA H200" in gpu_row and "141.0 GiB" in gpu_row and f'href="/jobs/{queued_job["id"]}"' in gpu_row
    assert 'data-testid="stale"' not in gpu_row
    cpu_row = re.search(r'<tr data-worker="cpu@h2"[^>]*>(.*?)</tr>', page, re.DOTALL).group(1)
    assert 'data-testid="stale"' in cpu_row and "4 cores" in cpu_row

    client.post("/logout", data={"csrf_token": csrf_of(page)})
    log_in(client, other_auth)
    page = client.get("/workers").text
    assert f'href="/jobs/{queued_job["id"]}"' not in page and 'data-worker="gpu@h1"' in page
