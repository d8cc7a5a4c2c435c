"""Declare each endpoint's schemas once; validate with them and build the OpenAPI 3 document."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, request
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from db.errors import InvalidInput

M = TypeVar("M", bound=BaseModel)
_PATH_PARAM = re.compile(r"<(?:(\w+):)?(\w+)>")


def spec(
    summary: str,
    *,
    body: type[BaseModel] | None = None,
    body_required: bool = True,
    query: type[BaseModel] | None = None,
    response: type[BaseModel] | None = None,
    status: int = 200,
    multipart: dict[str, str] | None = None,
    produces: str | None = None,
) -> Callable:
    """Attach OpenAPI metadata to a view function."""

    def decorate(view: Callable) -> Callable:
        view._openapi = dict(
            summary=summary, body=body, body_required=body_required, query=query, response=response,
            status=status, multipart=multipart, produces=produces,
        )
        return view

    return decorate


def parse_body(model: type[M], *, optional: bool = False) -> M:
    """Validate the JSON request body with `model` (422 naming each bad field); `optional`: none is `model()`."""
    if optional and not request.get_data(cache=True):
        return model()
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise InvalidInput("the request body must be a JSON object (Content-Type: application/json)",
                           code="invalid_json")
    return model.model_validate(data)


def parse_query(model: type[M]) -> M:
    """Validate the query string with `model`."""
    return model.model_validate(request.args.to_dict())


def build_openapi(app: Flask, *, title: str, version: str) -> dict[str, Any]:
    """Return the OpenAPI 3.1 document of every view that carries `spec` metadata."""
    paths: dict[str, dict[str, Any]] = {}
    models: set[type[BaseModel]] = set()
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        meta = getattr(app.view_functions[rule.endpoint], "_openapi", None)
        if meta is None:
            continue
        path = _PATH_PARAM.sub(r"{\2}", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(rule, meta, models)
    schemas = _component_schemas(models)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


def _operation(rule, meta: dict[str, Any], models: set) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": meta["summary"], "operationId": rule.endpoint.replace(".", "_")}
    params = [
        {"name": name, "in": "path", "required": True,
         "schema": {"type": "integer" if conv == "int" else "string"}}
        for conv, name in _PATH_PARAM.findall(rule.rule)
    ]
    if meta["query"] is not None:
        properties = meta["query"].model_json_schema()["properties"]
        for name, field in meta["query"].model_fields.items():
            schema = {k: v for k, v in properties[name].items() if k not in ("title", "description")}
            params.append({"name": name, "in": "query", "required": field.is_required(),
                           "description": field.description or "", "schema": schema})
    if params:
        operation["parameters"] = params
    if meta["body"] is not None:
        models.add(meta["body"])
        operation["requestBody"] = {"required": meta["body_required"],
                                    "content": {"application/json": {"schema": _ref(meta["body"])}}}
    if meta["multipart"]:
        props = {k: {"type": "string", "description": v} for k, v in meta["multipart"].items()}
        props["file"] = {"type": "string", "format": "binary", "description": meta["multipart"].get("file", "")}
        operation["requestBody"] = {
            "required": True,
            "content": {"multipart/form-data": {"schema": {"type": "object", "properties": props, "required": ["file"]}}},
        }
    ok: dict[str, Any] = {"description": "OK"}
    if meta["response"] is not None:
        models.add(meta["response"])
        ok["content"] = {"application/json": {"schema": _ref(meta["response"])}}
    elif meta["produces"]:
        ok["content"] = {meta["produces"]: {"schema": {"type": "string", "format": "binary"}}}
    operation["responses"] = {
        str(meta["status"]): ok,
        "4XX": {"description": "Client error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}},
    }
    return operation


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _component_schemas(models: set[type[BaseModel]]) -> dict[str, Any]:
    from api.schemas import ErrorBody

    models = models | {ErrorBody}
    pairs = [(m, "validation") for m in sorted(models, key=lambda m: m.__name__)]
    _, top = models_json_schema(pairs, ref_template="#/components/schemas/{model}")
    return _valid_discriminators(top.get("$defs", {}))


def _valid_discriminators(node: Any) -> Any:
    """Drop discriminator objects whose mapping is not names to references.

    Pydantic maps an outer tag (`kind`) to the inner union of its tasks, which OpenAPI does not
    allow; the `oneOf` beside it still says what is accepted.
    """
    if isinstance(node, list):
        return [_valid_discriminators(value) for value in node]
    if not isinstance(node, dict):
        return node
    out = {key: _valid_discriminators(value) for key, value in node.items()}
    mapping = out.get("discriminator", {}).get("mapping", {}) if isinstance(out.get("discriminator"), dict) else {}
    if any(not isinstance(target, str) for target in mapping.values()):
        del out["discriminator"]
    return out
