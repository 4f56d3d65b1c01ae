"""The admin API's OpenAPI 3.1 document, generated from the endpoint declarations and their pydantic models
(the same ones that validate requests and shape answers), so the document says what the API does."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from workers.admin.http import Endpoint, ErrorBody, InvalidBody

REF = "#/components/schemas/{model}"
ERRORS = {
    "400": "The body is not JSON", "401": "No valid API key", "403": "The key may not act on this tenant",
    "404": "No such object", "409": "Conflicts with what is stored", "413": "The body is too large",
    "429": "This key made too many requests: retry after Retry-After seconds",
}


def _parameters(endpoint: Endpoint) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True,
         "schema": {"type": "string", "enum": list(endpoint.path_choices[name])} if name in endpoint.path_choices
         else {"type": "string", "format": "uuid"}}
        for name in endpoint.path_params
    ]
    for name, (pattern, description) in endpoint.headers.items():
        params.append({"name": name, "in": "header", "required": True, "description": description,
                       "schema": {"type": "string", "pattern": pattern.pattern}})
    if endpoint.query is not None:
        schema = endpoint.query.model_json_schema(ref_template=REF)
        required = set(schema.get("required", []))
        for name, prop in schema["properties"].items():
            prop = {k: v for k, v in prop.items() if k != "title"}
            params.append({"name": name, "in": "query", "required": name in required, "schema": prop,
                           **({"description": prop["description"]} if "description" in prop else {})})
    return params


def _json(ref: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ref}}}


def _download(endpoint: Endpoint) -> dict[str, Any]:
    return {"description": endpoint.summary,
            "content": {endpoint.media_type: {"schema": {"type": "string", "format": "binary"}}}}


def document(endpoints: list[Endpoint], *, title: str = "Intake admin API", version: str = "1") -> dict[str, Any]:
    models: list[tuple[type[BaseModel], Any]] = [(ErrorBody, "serialization"), (InvalidBody, "serialization")]
    for e in endpoints:
        if e.response is not None:
            models.append((e.response, "serialization"))
        if e.body is not None:
            models.append((e.body, "validation"))
    refs, defs = models_json_schema(models, ref_template=REF)
    error, invalid = refs[(ErrorBody, "serialization")], refs[(InvalidBody, "serialization")]
    paths: dict[str, dict[str, Any]] = {}
    for e in endpoints:
        responses: dict[str, Any] = {str(e.status): _json(refs[(e.response, "serialization")], e.summary)
                                     if e.response is not None else _download(e)}
        if e.response is not None:
            responses.update({str(code): _json(refs[(e.response, "serialization")], text)
                              for code, text in e.also.items()})
        responses.update({code: _json(error, text) for code, text in ERRORS.items()})
        responses["422"] = _json(invalid, "Some fields are invalid: `fields` names each")
        operation: dict[str, Any] = {
            "operationId": f"{e.method.lower()}_{e.handler.__name__}", "summary": e.summary,
            "parameters": _parameters(e), "responses": responses, "security": [{"bearer": []}],
        }
        if e.body is not None:
            operation["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": refs[(e.body, "validation")]}}}
        paths.setdefault(e.path, {})[e.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version,
                 "description": "Every list takes `limit` (1-500, default 50) and `offset`, and answers "
                                "`{\"items\": [...], \"next_offset\": n}` (null on the last page)."},
        "paths": paths,
        "components": {"schemas": defs.get("$defs", {}),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
