"""Plain helpers for the API tests: requests, the error-body check and job bodies."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

API = "/api/v1"

# Text lengths 10, 22 and 9; labels pos, neg, pos.
LABELLED_CSV = b'review,sentiment\nI loved it,pos\n"Dull, and far too long",neg\nFine show,pos\n'
UNLABELLED_CSV = b"review\nWhat a lovely day\nThe bus was late again\n"


def upload(client, headers: dict[str, str], content: bytes, filename: str, **form: str):
    """POST a dataset file as multipart/form-data, with `form` as extra fields."""
    data = {"file": (io.BytesIO(content), filename), **form}
    return client.post(f"{API}/datasets", headers=headers, data=data, content_type="multipart/form-data")


def assert_error(response, status: int, code: str, *mentions: str) -> dict[str, Any]:
    """Assert the one JSON error body, its code and that its message names each of `mentions`."""
    body = response.get_data(as_text=True)
    assert response.status_code == status, body
    assert response.mimetype == "application/json", body
    assert "Traceback" not in body
    error = response.get_json()["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == code, error
    assert isinstance(error["details"], dict)
    for text in mentions:
        assert text in error["message"], error["message"]
    return error


def files_under(root: Path) -> list[str]:
    """Return every file below `root` as a sorted list of relative paths ([] if it is missing)."""
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def dataset_ids(client, headers: dict[str, str]) -> list[int]:
    """Return the ids GET /datasets lists for the tenant."""
    response = client.get(f"{API}/datasets?limit=200", headers=headers)
    assert response.status_code == 200
    return [d["id"] for d in response.get_json()["items"]]


def finetune_body(dataset_id: int, model: Path | str, **params: Any) -> dict[str, Any]:
    """Return a finetune submission; `params` override the defaults."""
    return {"kind": "finetune", "params": {"base_model": str(model), "train_dataset_id": dataset_id, **params}}


def evaluate_body(dataset_id: int, model: Path | str, **params: Any) -> dict[str, Any]:
    """Return an evaluate submission."""
    return {"kind": "evaluate", "params": {"model": str(model), "dataset_id": dataset_id, **params}}


def batch_body(dataset_id: int, model: Path | str, **params: Any) -> dict[str, Any]:
    """Return a batch_inference submission."""
    return {"kind": "batch_inference", "params": {"model": str(model), "dataset_id": dataset_id, **params}}


def submit(client, headers: dict[str, str], body: dict[str, Any], status: int = 202) -> dict[str, Any]:
    """POST /jobs, assert the status, return the job."""
    response = client.post(f"{API}/jobs", headers=headers, json=body)
    assert response.status_code == status, response.get_data(as_text=True)
    return response.get_json()
