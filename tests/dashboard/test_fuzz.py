"""Hostile input on every route that takes input: no answer is a 5xx, and a refused request
writes nothing. Hypothesis draws the path parameters, the query, the form fields and the JSON
body from what broke the dashboard before (NUL and other control characters, bodies nested
100,000 levels deep, bodies over the size limit, bytes that are not UTF-8, huge strings),
mixed with ordinary values; bounded to a few examples per route so that it runs in CI. On
PostgreSQL, which refuses NUL in text where SQLite stores it: one dashboard for the module,
each request judged by what it changed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import URL

from farm.db.session import make_engine
from tests.dashboard.routes import bare_app, mapped_routes
from tests.fixtures.dashboard import Studio, make_studio

# Logging in and out write (a failure count, a session) whatever their answer.
WRITE_ON_REFUSAL = {"POST auth.login", "POST auth.logout"}
ROUTES = [
    route
    for route in mapped_routes(bare_app())
    if route.key not in WRITE_ON_REFUSAL
    and (route.method != "GET" or route.parameters or route.endpoint.startswith("api."))
]
FIELDS = [
    "name", "class_word", "trigger", "character_id", "scenes", "preset", "width", "height",
    "steps", "priority", "webhook_url", "source", "role", "username", "password", "status",
]  # fmt: skip

TEXT = st.one_of(
    st.text(max_size=40),  # control characters and NUL included
    st.sampled_from(["\x00", "a\x00b", "\x1b[2J", "\r\nSet-Cookie: x=1", "\u202e", "1", "-1"]),
    st.just("x" * 200_000),
)
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
BODY = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS) | TEXT, JSON_VALUE, max_size=6).map(
        lambda body: json.dumps(body).encode()
    ),
    st.integers(33, 100_000).map(lambda depth: b"[" * depth + b"]" * depth),
    st.binary(max_size=64),  # mostly not UTF-8
    st.just(b'{"scenes": "' + b"x" * (5 * 1024 * 1024) + b'"}'),  # over the document limit
)


@pytest.fixture(scope="module")
def studio(postgres_database: URL, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Studio]:
    schema = f"fuzz_{uuid.uuid4().hex[:12]}"
    engine = make_engine(postgres_database)
    with engine.begin() as connection:
        connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = postgres_database.update_query_dict({"options": f"-csearch_path={schema}"})
    made = make_studio(tmp_path_factory.mktemp("fuzz"), url.render_as_string(hide_password=False))
    yield made
    made.farm.close()
    with engine.begin() as connection:
        connection.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
    engine.dispose()


@pytest.mark.parametrize("route", ROUTES, ids=str)
@settings(
    max_examples=12,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_hostile_input_is_never_a_server_error_and_a_refusal_writes_nothing(
    studio: Studio, route: Any, data: st.DataObject
):
    path = route.url({name: quote(data.draw(TEXT), safe="") for name in route.parameters})
    query = data.draw(st.dictionaries(st.sampled_from(FIELDS) | TEXT, TEXT, max_size=3))
    kwargs: dict[str, Any] = {"query_string": query}
    if route.method != "GET":
        if data.draw(st.booleans()):
            kwargs["data"] = data.draw(BODY)
            kwargs["headers"] = {"Content-Type": "application/json"}
        else:
            kwargs["data"] = data.draw(st.dictionaries(st.sampled_from(FIELDS) | TEXT, TEXT))
    before, stored = studio.rows(), studio.stored()

    response = studio.call(route.method, path, "a-admin", **kwargs)

    assert response.status_code < 500, (route, path, response.text[:300])
    if response.status_code >= 400:
        assert studio.rows() == before and studio.stored() == stored, (route, path)
