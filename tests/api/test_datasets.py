"""Dataset upload in every format, listing, stats and deletion."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.api.helpers import API, LABELLED_CSV, assert_error, dataset_ids, files_under, upload

ROWS = [
    {"id": "1", "body": "Stocks rallied", "topic": "business"},
    {"id": "2", "body": "The striker scored twice", "topic": "sport"},
    {"id": "3", "body": "Markets closed flat", "topic": "business"},
]


def _delimited(delimiter: str) -> bytes:
    lines = [delimiter.join(ROWS[0])] + [delimiter.join(row.values()) for row in ROWS]
    return ("\n".join(lines) + "\n").encode()


def _jsonl() -> bytes:
    return "".join(json.dumps(row) + "\n" for row in ROWS).encode()


def _parquet() -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(ROWS), buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("filename", "content", "fmt"),
    [
        ("news.csv", _delimited(","), "csv"),
        ("news.tsv", _delimited("\t"), "tsv"),
        ("news.jsonl", _jsonl(), "jsonl"),
        ("news.parquet", _parquet(), "parquet"),
    ],
)
def test_upload_each_format_with_column_mapping(client, auth, data_dir, filename, content, fmt):
    response = upload(client, auth, content, filename, text_column="body", label_column="topic")

    assert response.status_code == 201, response.get_data(as_text=True)
    dataset = response.get_json()
    assert dataset["name"] == filename
    assert dataset["format"] == fmt
    assert (dataset["text_column"], dataset["label_column"]) == ("body", "topic")
    assert dataset["columns"] == ["id", "body", "topic"]
    assert dataset["row_count"] == 3
    assert dataset["size_bytes"] == len(content)
    assert dataset["sha256"] == hashlib.sha256(content).hexdigest()
    assert dataset["stats"]["label_distribution"] == {"business": 2, "sport": 1}
    assert dataset["created_at"].endswith("Z")
    [stored] = files_under(data_dir / "datasets")
    canonical = (data_dir / "datasets" / stored).read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in canonical] == ROWS


def test_declared_format_overrides_the_file_name(client, auth):
    response = upload(client, auth, _delimited("\t"), "export.txt", format="tsv", text_column="body")
    assert response.status_code == 201, response.get_data(as_text=True)
    assert response.get_json()["format"] == "tsv"
    assert response.get_json()["label_column"] is None


def test_name_field_and_default_text_column(client, auth):
    response = upload(client, auth, b"text\nhello\n", "a.csv", name="Greetings")
    assert response.status_code == 201
    assert (response.get_json()["name"], response.get_json()["text_column"]) == ("Greetings", "text")


def test_get_one_has_label_distribution_and_length_percentiles(client, auth):
    texts = ["x" * n for n in range(1, 11)]
    labels = ["b", "a", "a", "c", "a", "b", "a", "b", "a", "a"]
    content = ("text,label\n" + "".join(f"{t},{l}\n" for t, l in zip(texts, labels))).encode()
    created = upload(client, auth, content, "lengths.csv", label_column="label").get_json()

    response = client.get(f"{API}/datasets/{created['id']}", headers=auth)

    assert response.status_code == 200
    stats = response.get_json()["stats"]
    assert stats["label_distribution"] == {"a": 6, "b": 3, "c": 1}
    assert list(stats["label_distribution"]) == ["a", "b", "c"]  # most frequent first
    assert stats["num_labels"] == 3
    assert stats["text_length_chars"] == {"min": 1, "p50": 5, "p90": 9, "p99": 10, "max": 10, "mean": 5.5,
                                          "histogram": {"edges": [0, 8, 16], "counts": [7, 3]}}


def test_unknown_dataset_is_404(client, auth):
    assert_error(client.get(f"{API}/datasets/999", headers=auth), 404, "dataset_not_found", "999")
    assert_error(client.get(f"{API}/datasets/{2**70}", headers=auth), 404, "dataset_not_found")
    assert_error(client.delete(f"{API}/datasets/999", headers=auth), 404, "dataset_not_found", "999")


def test_list_pages_newest_first_with_a_cursor(client, auth):
    ids = [upload(client, auth, LABELLED_CSV, f"d{i}.csv", text_column="review").get_json()["id"] for i in range(5)]

    seen, cursor, pages = [], None, 0
    while True:
        query = "limit=2" + (f"&cursor={cursor}" if cursor else "")
        response = client.get(f"{API}/datasets?{query}", headers=auth)
        assert response.status_code == 200
        body = response.get_json()
        seen += [d["id"] for d in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert cursor == body["items"][-1]["id"]

    assert seen == sorted(ids, reverse=True)
    assert pages == 3
    assert [d["name"] for d in client.get(f"{API}/datasets", headers=auth).get_json()["items"]][:2] == ["d4.csv", "d3.csv"]


@pytest.mark.parametrize(
    ("query", "field"),
    [("limit=0", "limit"), ("limit=-1", "limit"), ("limit=201", "limit"), ("limit=lots", "limit"),
     ("cursor=abc", "cursor"), ("cursor=0", "cursor"), (f"cursor={2**70}", "cursor"), ("sort=name", "sort")],
)
def test_list_refuses_a_bad_query(client, auth, labelled, query, field):
    response = client.get(f"{API}/datasets?{query}", headers=auth)
    error = assert_error(response, 422, "invalid_input", field)
    assert [f["field"] for f in error["details"]["fields"]] == [field]


def test_delete_then_404_and_file_removed(client, auth, data_dir, labelled):
    url = f"{API}/datasets/{labelled['id']}"
    assert len(files_under(data_dir / "datasets")) == 1

    response = client.delete(url, headers=auth)

    assert response.status_code == 204
    assert response.get_data() == b""
    assert_error(client.get(url, headers=auth), 404, "dataset_not_found")
    assert_error(client.delete(url, headers=auth), 404, "dataset_not_found")
    assert dataset_ids(client, auth) == []
    assert files_under(data_dir / "datasets") == []


def test_delete_refused_while_a_queued_job_reads_it(client, auth, data_dir, labelled, queued_job):
    url = f"{API}/datasets/{labelled['id']}"

    error = assert_error(client.delete(url, headers=auth), 409, "dataset_in_use", str(queued_job["id"]))

    assert error["details"] == {"job_ids": [queued_job["id"]]}
    assert client.get(url, headers=auth).status_code == 200
    assert len(files_under(data_dir / "datasets")) == 1
    assert client.post(f"{API}/jobs/{queued_job['id']}/cancel", headers=auth).status_code == 202
    assert client.delete(url, headers=auth).status_code == 204


def test_stored_file_name_is_server_generated(client, auth, data_dir):
    response = upload(client, auth, LABELLED_CSV, "my reviews (final).csv", text_column="review")
    assert response.status_code == 201
    [stored] = files_under(data_dir / "datasets")
    assert Path(stored).suffix == ".jsonl"
    assert len(Path(stored).stem) == 32 and int(Path(stored).stem, 16) >= 0


def _app_with_storage(database_url, redis_url, data_dir, storage_url, storage_options):
    from api import create_app

    return create_app({"database_url": database_url, "redis_url": redis_url, "data_dir": str(data_dir),
                       "storage_url": storage_url, "storage_options": storage_options, "TESTING": True})


def test_with_a_bucket_an_upload_is_stored_there_and_deleted_from_there(database_url, redis_url, tmp_path, bucket):
    from tests.conftest import make_token
    from worker.storage import Storage

    app = _app_with_storage(database_url, redis_url, tmp_path / "api", *bucket)
    try:
        client, auth = app.test_client(), make_token(app, "acme")
        response = upload(client, auth, LABELLED_CSV, "reviews.csv", text_column="review", label_column="sentiment")
        assert response.status_code == 201, response.get_data(as_text=True)
        with app.extensions["nightshift"].session_factory() as session:
            from db.models import Dataset

            path = session.get(Dataset, response.get_json()["id"]).path
        storage = Storage(bucket[0], json.loads(bucket[1]), tmp_path / "reader")
        assert path.startswith(bucket[0] + "/datasets/") and storage.exists(path)
        assert files_under(tmp_path / "api" / "datasets") == []  # the API host keeps no copy
        assert client.delete(f"{API}/datasets/{response.get_json()['id']}", headers=auth).status_code == 204
        assert not storage.exists(path)
    finally:
        app.extensions["nightshift"].engine.dispose()


def test_an_unreachable_bucket_is_503_and_nothing_is_kept(database_url, redis_url, tmp_path):
    from nightshift.stack import free_port
    from tests.conftest import make_token

    options = json.dumps({"endpoint_url": f"http://127.0.0.1:{free_port()}", "key": "k", "secret": "s",
                          "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1}})
    app = _app_with_storage(database_url, redis_url, tmp_path / "api", "s3://nowhere/data", options)
    try:
        client, auth = app.test_client(), make_token(app, "acme")
        response = upload(client, auth, LABELLED_CSV, "reviews.csv", text_column="review", label_column="sentiment")
        error = assert_error(response, 503, "storage_unavailable", "storage s3://nowhere/data failed",
                             "nothing was changed: try again shortly")
        assert error["details"] == {}
        assert dataset_ids(client, auth) == [] and files_under(tmp_path / "api" / "datasets") == []

        # A dataset stored before the bucket went away can still be deleted: its file is left behind, logged.
        from db.models import Dataset
        from db.services.tenants import get_or_create_tenant

        with app.extensions["nightshift"].session_factory.begin() as session:
            stored = Dataset(tenant_id=get_or_create_tenant(session, "acme").id, name="old", format="csv",
                             column_map={"text": "text"}, text_column="text", columns=["text"], row_count=1,
                             size_bytes=5, sha256="0" * 64, path="s3://nowhere/data/datasets/old.jsonl", stats={})
            session.add(stored)
            session.flush()
            stored_id = stored.id
        assert client.delete(f"{API}/datasets/{stored_id}", headers=auth).status_code == 204
        assert dataset_ids(client, auth) == []
    finally:
        app.extensions["nightshift"].engine.dispose()
