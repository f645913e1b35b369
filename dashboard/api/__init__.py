"""The JSON API, `/api/v1`: characters, jobs, renders, the farm, tokens and accounts.

Each route says once, with `@operation`, who may call it, what it takes and what it answers;
that one declaration checks the role, validates the query and body, serialises the answer and
is what the OpenAPI document (`/api/v1/openapi.json`) is made from, so the document cannot
drift from the routes. Errors are `{"error": "..."}` with a 4xx (see dashboard.errors).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel, ValidationError

from dashboard.context import farm
from dashboard.security import require_role
from dashboard.studio import refuse_nul
from farm.db.models import Role
from farm.documents import check_size, parse_json
from farm.errors import InputError

api = Blueprint("api", __name__, url_prefix="/api/v1")


@dataclass(frozen=True)
class Operation:
    """What the OpenAPI document says about one route."""

    tag: str
    summary: str
    description: str
    role: Role | None  # None: no login needed
    status: int
    response: type[BaseModel] | None
    query: type[BaseModel] | None
    body: type[BaseModel] | None
    body_schema: str | None  # a body documented by schema name, validated by the route itself
    body_type: str
    errors: tuple[int, ...]  # answers beyond those every route of its kind may give


def operation(
    tag: str,
    *,
    role: Role | None = Role.VIEWER,
    status: int = 200,
    response: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    body: type[BaseModel] | None = None,
    body_schema: str | None = None,
    body_type: str = "application/json",
    errors: tuple[int, ...] = (),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare a route: the view gets `query=` / `body=` as validated models and returns a
    `response` model (sent with `status`), or None for 204 No Content."""

    def wrap(view: Callable[..., Any]) -> Callable[..., Any]:
        summary, _, description = (view.__doc__ or view.__name__).strip().partition("\n")
        op = Operation(
            tag,
            summary.strip(),
            " ".join(description.split()),
            role,
            status,
            response,
            query,
            body,
            body_schema,
            body_type,
            errors,
        )

        @functools.wraps(view)
        def run(**kwargs: Any) -> Any:
            if role is not None:
                require_role(role)
            if query is not None:
                kwargs["query"] = validated(query, request.args.to_dict(), "query")
            if body is not None:
                kwargs["body"] = validated(body, json_body(), "body")
            result = view(**kwargs)
            if result is None:
                return Response(status=204)
            return jsonify(result.model_dump(mode="json")), status

        run.operation = op  # type: ignore[attr-defined]
        if role is None:
            run.public = True  # type: ignore[attr-defined]
        return run

    return wrap


def json_body() -> dict[str, Any]:
    """The body as a JSON object, its size and nesting checked before it is parsed (a body
    nested 100,000 levels deep would cost `json.loads` seconds and end in a RecursionError)."""
    if not request.is_json:
        raise InputError(_NOT_AN_OBJECT)
    limits = farm().settings.document_limits
    if request.content_length is not None:
        check_size(request.content_length, "body", limits)
    body = parse_json(request.stream.read(limits.max_bytes + 1), "body", limits)
    if not isinstance(body, dict):
        raise InputError(_NOT_AN_OBJECT)
    refuse_nul(body)
    return body


_NOT_AN_OBJECT = "the body must be a JSON object, sent with Content-Type: application/json"


def validated(model: type[BaseModel], data: Mapping[str, Any], where: str) -> Any:
    refuse_nul(dict(data), where)
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise InputError(describe(error, where)) from None


def describe(error: ValidationError, where: str) -> str:
    """One line per problem, each naming the field: `query.limit: ... (got '500')`."""
    return "; ".join(
        f"{'.'.join([where, *map(str, e['loc'])])}: {e['msg']} (got {e.get('input')!r:.60})"
        for e in error.errors()
    )


# The routes register themselves on `api` when imported.
from dashboard.api import (  # noqa: E402, F401
    access,
    approvals,
    characters,
    editorial,
    farm_routes,
    jobs,
    openapi,
    renders,
    scheduling,
)
