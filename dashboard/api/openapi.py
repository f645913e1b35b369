"""The OpenAPI 3.1 document of `/api/v1`, made from the routes themselves.

Paths, methods and path parameters come from Flask's URL map; roles, query strings, bodies and
answers from each route's `@operation`; their schemas from the pydantic models, and the job
body from the story spec (`farm.story.Story`), so a new story field appears here by itself.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Response, current_app, jsonify
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from dashboard.api import Operation, api
from dashboard.api.schemas import ErrorOut
from dashboard.scope import MAX_ID
from dashboard.security import public
from farm.db.models import Role
from farm.identity.photos import ALLOWED_FORMATS
from farm.queue.app import MAX_PRIORITY
from farm.story import MAX_CAST, MAX_PHOTOS, Story
from farm.webhooks import MAX_URL_LENGTH

REF = "#/components/schemas/{model}"
_PARAMETER = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>")
_PATH_SCHEMAS = {
    "int": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
    "uuid": {"type": "string", "format": "uuid"},
    "default": {"type": "string", "minLength": 1, "maxLength": 255},
}


@api.get("/openapi.json")
@public
def openapi_json() -> Response:
    return jsonify(document())


def document() -> dict[str, Any]:
    operations = [
        (rule, view.operation)
        for rule in current_app.url_map.iter_rules()
        if (view := current_app.view_functions[rule.endpoint]) and hasattr(view, "operation")
    ]
    models: set[tuple[type[BaseModel], str]] = {(ErrorOut, "serialization")}
    for _, op in operations:
        if op.response is not None:
            models.add((op.response, "serialization"))
        if op.body is not None:
            models.add((op.body, "validation"))
    _, schemas = models_json_schema(sorted(models, key=lambda m: m[0].__name__), ref_template=REF)
    components = {**schemas.get("$defs", {}), **job_create_schemas(), **character_create_schema()}

    paths: dict[str, dict[str, Any]] = {}
    for rule, op in sorted(operations, key=lambda item: item[0].rule):
        path = _PARAMETER.sub(lambda m: "{" + m.group(2) + "}", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(rule, method, op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "render-farm API",
            "version": "1",
            "description": (
                "Identity-consistent story illustration: characters from photos, stories "
                "rendered as jobs on the farm's GPU workers. Authenticate with "
                "`Authorization: Bearer <token>`; `farm tokens create` makes the first one."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


def _operation(rule: Any, method: str, op: Operation) -> dict[str, Any]:
    path_params = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": _PATH_SCHEMAS.get(converter or "default", _PATH_SCHEMAS["default"]),
        }
        for converter, name in _PARAMETER.findall(rule.rule)
    ]
    doc: dict[str, Any] = {
        "operationId": rule.endpoint.removeprefix("api."),
        "tags": [op.tag],
        "summary": op.summary,
        "parameters": path_params + _query_parameters(op),
        "responses": _responses(op, bool(path_params), method),
    }
    if op.description:
        doc["description"] = op.description
    if op.role is None:
        doc["security"] = []
    else:
        doc["x-role"] = str(op.role)  # the least role that may call it
        if op.role is not Role.VIEWER:
            doc["description"] = f"{op.description} Needs the {op.role} role.".strip()
    body = op.body.__name__ if op.body is not None else op.body_schema
    if body is not None:
        doc["requestBody"] = {
            "required": True,
            "content": {op.body_type: {"schema": {"$ref": REF.format(model=body)}}},
        }
    return doc


def _query_parameters(op: Operation) -> list[dict[str, Any]]:
    if op.query is None:
        return []
    schema = op.query.model_json_schema(ref_template=REF)
    required = set(schema.get("required", []))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": field}
        for name, field in schema["properties"].items()
    ]


def _responses(op: Operation, has_path_params: bool, method: str) -> dict[str, Any]:
    error = {"content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorOut")}}}}
    ok: dict[str, Any] = {"description": "OK" if op.status < 300 else "Created"}
    if op.status == 204:
        ok["description"] = "Done; no content"
    elif op.response is not None:
        schema = {"$ref": REF.format(model=op.response.__name__)}
        ok["content"] = {"application/json": {"schema": schema}}
    responses: dict[str, Any] = {str(op.status): ok}
    if op.query is not None or op.body is not None or op.body_schema is not None:
        responses["400"] = {"description": "Bad input; the message names the field", **error}
    if op.role is not None:
        responses["401"] = {"description": "No valid token", **error}
        responses["403"] = {"description": "The token's role may not do this", **error}
    if has_path_params or 404 in op.errors:
        responses["404"] = {"description": "No such row in your project", **error}
    if method in ("POST", "DELETE"):
        responses["400"] = {"description": "Bad input or state; the message says", **error}
        responses["409"] = {"description": "The row changed meanwhile; read it again", **error}
    if op.body_type == "multipart/form-data":
        responses["413"] = {"description": "The upload is over the size limit", **error}
    # Any route: a control character in the path or the query (dashboard/errors.py).
    responses.setdefault(
        "400", {"description": "A control character in the path or query", **error}
    )
    return responses


def job_create_schemas() -> dict[str, Any]:
    """`JobCreate`: the story spec with `character_id` where the character section is."""
    story = Story.model_json_schema(ref_template=REF)
    defs = story.pop("$defs", {})
    character = defs.pop("Character")
    properties = dict(story["properties"])
    properties.pop("character")
    # The cast names characters of the project by id, as the main one is (dashboard.studio).
    properties["cast"] = {
        "type": "array",
        "maxItems": MAX_CAST - 1,
        "items": {
            "type": "object",
            "additionalProperties": False,
            "required": ["character_id"],
            "properties": {
                "character_id": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
                "trigger": {
                    "type": "string",
                    "description": "The word its prompts use for it; default: its own trigger.",
                },
            },
        },
        "description": "Other characters who may share a scene, each with its trigger word "
        "(e.g. 'a man img and a woman img2 at a table').",
    }
    story["properties"] = {
        "character_id": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
        "outfits": character["properties"]["outfits"],  # the character's, for this story
        **properties,
        "priority": {"type": "integer", "minimum": 0, "maximum": MAX_PRIORITY, "default": 5},
        "webhook_url": {
            "anyOf": [
                {"type": "string", "format": "uri", "maxLength": MAX_URL_LENGTH},
                {"type": "null"},
            ],
            "description": "Receives a POST when the job finishes (signed with HMAC-SHA256).",
        },
    }
    story["required"] = ["character_id", *(r for r in story["required"] if r != "character")]
    story["title"] = "JobCreate"
    return {**defs, "JobCreate": story}


def character_create_schema() -> dict[str, Any]:
    word = {"type": "string", "minLength": 1, "maxLength": 30}
    return {
        "CharacterCreate": {
            "title": "CharacterCreate",
            "type": "object",
            "required": ["name", "class_word", "photos"],
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 80},
                "class_word": {**word, "description": "man, woman, boy, girl, person, ..."},
                "trigger": {**word, "maxLength": 20, "default": "img"},
                "face_crop": {"type": "boolean", "default": False},
                "photos": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_PHOTOS,
                    "items": {"type": "string", "format": "binary"},
                    "description": f"{', '.join(ALLOWED_FORMATS)} images, one clear face each.",
                },
            },
        }
    }
