"""The OpenAPI document, and an API process that starts without the ML stack."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from api.openapi import build_openapi
from tests.api.helpers import API

ROOT = Path(__file__).resolve().parents[2]
HEAVY_MODULES = ("torch", "transformers", "datasets", "accelerate")


@pytest.fixture
def document(client) -> dict:
    response = client.get(f"{API}/openapi.json")
    assert response.status_code == 200
    return response.get_json()


def _refs(node) -> list[str]:
    """Return every `$ref` and discriminator mapping target in the document."""
    found: list[str] = []
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            found.append(node["$ref"])
        found += node.get("discriminator", {}).get("mapping", {}).values()
        node = list(node.values())
    if isinstance(node, list):
        for value in node:
            found += _refs(value)
    return found


def test_document_is_openapi_3_with_every_api_path(app, document):
    assert document["openapi"].startswith("3.")
    assert document["info"]["title"]
    assert document["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(API) or rule.endpoint == "health.openapi":
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        assert path in document["paths"], path
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            operation = document["paths"][path][method.lower()]
            assert operation["summary"] and operation["responses"], (path, method)


def test_every_reference_resolves(document):
    schemas = document["components"]["schemas"]
    refs = set(_refs(document))
    assert {"#/components/schemas/ErrorBody", "#/components/schemas/FinetuneTextClassificationJobIn",
            "#/components/schemas/FinetuneTokenClassificationJobIn"} <= refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.removeprefix("#/components/schemas/") in schemas, ref


def test_operations_declare_their_schemas(document):
    paths = document["paths"]
    submit = paths[f"{API}/jobs"]["post"]
    assert submit["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/JobIn"}
    assert set(submit["responses"]) == {"202", "4XX"}
    retry = paths[f"{API}/jobs/{{job_id}}/retry"]["post"]["requestBody"]  # optional: no body retries as it was
    assert retry == {"required": False, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RetryIn"}}}}
    assert set(document["components"]["schemas"]["RetryIn"]["properties"]) == {"only_failed_rows", "params"}
    upload = paths[f"{API}/datasets"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert upload["required"] == ["file"]
    assert upload["properties"]["file"]["format"] == "binary"
    [param] = paths[f"{API}/jobs/{{job_id}}"]["get"]["parameters"]
    assert param == {"name": "job_id", "in": "path", "required": True, "schema": {"type": "integer"}}
    query = {p["name"]: p["schema"] for p in paths[f"{API}/jobs"]["get"]["parameters"]}
    assert query["limit"]["maximum"] == 200
    assert "finetune" in json.dumps(query["kind"])


def test_document_passes_the_openapi_validator(document):
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(document)


def test_document_is_built_the_same_each_time(app, document):
    with app.app_context():
        assert build_openapi(app, title="Nightshift API", version="1") == document


def _python(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIGHTSHIFT_")}
    env["NIGHTSHIFT_DATA_DIR"] = str(tmp_path)  # create_app() then defaults to a SQLite file there
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)


def test_import_api_leaves_the_ml_stack_out(tmp_path):
    result = _python(f"import api, sys; print([m for m in {HEAVY_MODULES!r} if m in sys.modules])", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_create_app_leaves_the_ml_stack_out(tmp_path):
    code = (
        "import sys, api\n"
        "app = api.create_app()\n"
        "assert app.test_client().get('/api/v1/openapi.json').status_code == 200\n"
        f"print([m for m in {HEAVY_MODULES!r} if m in sys.modules])\n"
    )
    result = _python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
