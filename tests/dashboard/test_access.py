"""Tokens, roles and projects on every API route: no token is 401, a role too small is 403 and
changes nothing, another team's rows are 404 as if they did not exist."""

from __future__ import annotations

import re
import threading
from dataclasses import replace
from io import BytesIO
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select

from farm.auth import create_account, create_token, ensure_project
from farm.db.models import Role, Shard, Worker
from farm.db.states import WorkerStatus
from farm.queue.app import make_celery
from tests.dashboard.routes import (
    ACCESS,
    NOWHERE,
    ROUTES,
    Access,
    MappedRoute,
    Route,
    bare_app,
    mapped_routes,
)
from tests.fixtures.dashboard import (
    Studio,
    finish_renders,
    make_character,
    make_studio,
    photo_files,
    story_body,
)

PROTECTED = [r for r in ROUTES if r.role is not None]
NEEDS_ARTIST = [r for r in ROUTES if r.role in (Role.ARTIST, Role.ADMIN)]
NEEDS_ADMIN = [r for r in ROUTES if r.role is Role.ADMIN]


def test_the_document_lists_every_route_with_its_role():
    listed = {str(r) for r in ROUTES}
    assert "POST /api/v1/jobs" in listed and "GET /api/v1/renders/{render_id}" in listed
    assert {r.role for r in ROUTES} == {Role.VIEWER, Role.ARTIST, Role.ADMIN}
    assert all(r.role is not Role.VIEWER for r in NEEDS_ARTIST)


@pytest.mark.parametrize("route", PROTECTED, ids=str)
def test_every_route_needs_a_token(studio: Studio, route: Route):
    response = studio.call(route.method, route.url(**NOWHERE), who=None)

    assert response.status_code == 401
    assert "Bearer" in response.json["error"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("token", ["rf_not-a-real-token", "not even the right shape", ""])
def test_a_wrong_token_is_401_even_on_a_cookie(studio: Studio, token: str):
    client = studio.client()
    studio.log_in(client)  # a valid session must not rescue a bad bearer token
    response = client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401


@pytest.mark.parametrize("route", NEEDS_ARTIST, ids=str)
def test_a_viewer_cannot_change_anything(studio: Studio, route: Route):
    before = studio.rows()

    response = studio.call(route.method, route.url(**NOWHERE), "a-viewer", json={})

    assert response.status_code == 403
    assert "viewer may not" in response.json["error"]
    assert studio.rows() == before
    assert not studio.tasks.sent


@pytest.mark.parametrize("route", NEEDS_ADMIN, ids=str)
def test_an_artist_cannot_manage_tokens_accounts_or_workers(studio: Studio, route: Route):
    before = studio.rows()

    response = studio.call(route.method, route.url(**NOWHERE), "a-artist", json={})

    assert response.status_code == 403
    assert "needs admin" in response.json["error"]
    assert studio.rows() == before


def test_a_team_cannot_see_or_touch_another_teams_rows(studio_on: Studio):
    studio = studio_on
    character_id = make_character(studio, "a-artist")
    job_id = studio.call("POST", "/api/v1/jobs", "a-artist", json=story_body(character_id)).json[
        "id"
    ]
    finish_renders(studio, job_id)
    render_id = studio.call("GET", f"/api/v1/jobs/{job_id}/renders", "a-viewer").json["items"][0][
        "id"
    ]
    token_id = studio.call("GET", "/api/v1/tokens", "a-admin").json["items"][0]["id"]
    account = {"username": "alice", "password": "correct horse battery", "role": "artist"}
    account_id = studio.call("POST", "/api/v1/accounts", "a-admin", json=account).json["id"]
    ids = {
        "character_id": character_id,
        "job_id": job_id,
        "render_id": render_id,
        "token_id": token_id,
        "account_id": account_id,
    }
    rows_of_a = [r for r in PROTECTED if set(ids) & set(_parameters(r))]
    assert len(rows_of_a) >= 9
    before = studio.rows()

    for route in rows_of_a:
        response = studio.call(route.method, route.url(**ids), "b-admin", json={})
        assert response.status_code == 404, f"{route}: {response.status_code} {response.json}"
        assert "error" in response.json

    assert studio.rows() == before
    for listing in ("/api/v1/characters", "/api/v1/jobs", "/api/v1/tokens", "/api/v1/accounts"):
        items = studio.call("GET", listing, "b-admin").json["items"]
        assert all(item["id"] not in ids.values() for item in items), listing
    jobs_of_b = studio.call("GET", f"/api/v1/jobs?character_id={character_id}", "b-admin")
    assert jobs_of_b.json["total"] == 0
    # Submitting with another team's character is refused the same way.
    refused = studio.call("POST", "/api/v1/jobs", "b-artist", json=story_body(character_id))
    assert refused.status_code == 404
    assert studio.rows() == before

    # The files and pages of team A are not found for team B either.
    client = studio.client()
    studio.log_in(client, "b-admin")
    for url in (
        f"/files/photos/{character_id}/0",
        f"/files/renders/{render_id}",
        f"/files/renders/{render_id}/thumb",
        f"/characters/{character_id}",
        f"/jobs/{job_id}",
        f"/jobs/{job_id}/gallery",
        f"/jobs/{job_id}/download.zip",
        f"/jobs/{job_id}/events",
        f"/jobs/{job_id}/comic",
        f"/renders/{render_id}",
    ):
        assert client.get(url).status_code == 404, url

    # ... while team A reads every one of its rows.
    for route in rows_of_a:
        if route.method == "GET":
            assert studio.call("GET", route.url(**ids), "a-admin").status_code == 200, route


def _parameters(route: Route) -> list[str]:
    return [part[1:-1] for part in route.path.split("/") if part.startswith("{")]


def test_me_names_the_project_and_role(studio: Studio):
    response = studio.call("GET", "/api/v1/me", "b-viewer")
    assert response.json == {
        "project": "team-b",
        "role": "viewer",
        "kind": "token",
        "name": "b viewer",
    }


def test_security_headers_on_pages_and_api(studio: Studio):
    for response in (studio.client().get("/login"), studio.call("GET", "/api/v1/me")):
        headers = response.headers
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["X-Frame-Options"] == "DENY"
    assert studio.call("GET", "/api/v1/me").headers["Cache-Control"] == "private, no-store"


def test_health_probes_need_no_login(tmp_path):
    studio = make_studio(tmp_path, f"sqlite:///{tmp_path / 'farm.db'}", record_tasks=False)
    client = studio.client()
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json == {
        **{"status": "ready", "database": "ok", "storage": "ok", "broker": "ok"},
        **{"reaper": "never ran", "reaper_last_run_s": None},
    }

    nowhere = replace(studio.farm.settings, broker_url="redis://127.0.0.1:9/0")  # port 9: closed
    studio.farm.__dict__["celery"] = make_celery(nowhere)
    unready = client.get("/readyz")
    assert unready.status_code == 503 and unready.json["broker"].startswith("unavailable")
    studio.farm.close()


def test_another_teams_work_shows_as_busy_without_its_ids(studio: Studio):
    character_id = make_character(studio, "a-artist")
    job_id = studio.call("POST", "/api/v1/jobs", "a-artist", json=story_body(character_id)).json[
        "id"
    ]
    with studio.farm.sessions.begin() as session:
        shard_id = session.scalars(select(Shard.id).where(Shard.job_id == job_id)).first()
        session.add(
            Worker(
                id="gpu-box:cuda0",
                hostname="gpu-box",
                device="cuda:0",
                presets=["tiny"],
                status=WorkerStatus.BUSY,
                current_shard_id=shard_id,
            )
        )

    (seen_by_a,) = studio.call("GET", "/api/v1/workers", "a-viewer").json["items"]
    (seen_by_b,) = studio.call("GET", "/api/v1/workers", "b-viewer").json["items"]

    assert (seen_by_a["current_shard_id"], seen_by_a["current_job_id"]) == (shard_id, job_id)
    assert seen_by_b["status"] == "busy"
    assert (seen_by_b["current_shard_id"], seen_by_b["current_job_id"]) == (None, None)
    client = studio.client()
    studio.log_in(client, "b-viewer")
    page = client.get("/farm").text
    assert "gpu-box:cuda0" in page and "another project's work" in page
    assert job_id not in page and f"shard {shard_id}" not in page


# Every rule of the URL map, for every caller -------------------------------------------------

MAPPED = mapped_routes(bare_app())
CALLERS = [None, "b-viewer", "b-artist", "b-admin", "a-viewer", "a-artist", "a-admin"]
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Routes that take away what routes after them need go last: the walk is one pass over one farm.
LAST = ("DELETE api.delete_character", "POST characters.delete", "POST auth.logout")
SSE_READ_S = 5.0


def test_every_route_of_the_url_map_has_an_access_rule():
    mapped = {route.key for route in MAPPED}
    assert sorted(mapped - ACCESS.keys()) == [], (
        "say who may call these in tests/dashboard/routes.py"
    )
    assert sorted(ACCESS.keys() - mapped) == [], "these rules name routes that are gone"


def test_the_api_rules_agree_with_the_openapi_document():
    documented = {str(route): route.role for route in ROUTES}
    for route in MAPPED:
        if route.rule.startswith("/api/") and route.key != "GET api.openapi_json":  # not in itself
            path = re.sub(r"<(?:[^:<>]+:)?(\w+)>", r"{\1}", route.rule)
            assert documented[f"{route.method} {path}"] == ACCESS[route.key].role, route


@pytest.fixture
def team_a_rows(studio: Studio) -> dict[str, dict[str, object]]:
    """A value for every path parameter, naming rows of team A; per route where the route
    destroys its row (a character of its own for each deletion)."""
    character_id = make_character(studio, "a-artist")
    job_id = studio.call("POST", "/api/v1/jobs", "a-artist", json=story_body(character_id)).json[
        "id"
    ]
    finish_renders(studio, job_id)
    render_id = studio.call("GET", f"/api/v1/jobs/{job_id}/renders", "a-viewer").json["items"][0][
        "id"
    ]
    studio.farm.storage.put(f"jobs/{job_id}/comic/page-001.png", tiny_png(), "image/png")
    with studio.farm.sessions.begin() as session:
        project = ensure_project(session, "team-a")
        token_id = create_token(session, project, Role.VIEWER, "a spare")[0].id
        account = create_account(session, project, "a-spare", "a spare password", Role.VIEWER)
        session.add(
            Worker(
                id="old-box:cuda1",
                hostname="old-box",
                device="cuda:0",
                presets=["tiny"],
                status=WorkerStatus.STOPPED,
            )
        )
        account_id = account.id
    values: dict[str, object] = {
        "character_id": character_id,
        "position": 0,
        "job_id": job_id,
        "render_id": render_id,
        "number": 0,
        "token_id": token_id,
        "account_id": account_id,
        "worker_id": "old-box:cuda1",
        "filename": "style.css",
    }
    per_route = {key: values for key in ACCESS}
    deletions = {
        "DELETE api.delete_character": "newton_0.jpg",
        "POST characters.delete": "newton_3.jpg",
    }
    for key, photo in deletions.items():  # other photos: the same ones would find the same row
        form = {"name": photo, "class_word": "man", "photos": photo_files(photo)}
        made = studio.call("POST", "/api/v1/characters", "a-artist", data=form)
        per_route[key] = {**values, "character_id": made.json["id"]}
    return per_route


def tiny_png() -> bytes:
    out = BytesIO()
    Image.new("RGB", (4, 4)).save(out, "PNG")
    return out.getvalue()


def test_every_route_answers_every_caller_by_its_rule(
    studio: Studio, team_a_rows: dict[str, dict[str, object]]
):
    """Anonymous, three roles of team A and three of team B on every route of the URL map:
    pages and files through a logged-in session, the API with bearer tokens, the live stream
    read for a moment. A route that changes something is called by one caller that may (the
    smallest role of team A), after every caller that may not."""
    sessions = {}
    for who in CALLERS[1:]:
        client = studio.client()
        sessions[who] = (client, studio.log_in(client, who))
    order = sorted(MAPPED, key=lambda r: (r.key in LAST, LAST.index(r.key) if r.key in LAST else 0))
    wrong = []
    for route in order:
        access = ACCESS[route.key]
        url = route.url(team_a_rows[route.key])
        changed = False
        for who in CALLERS:
            may = access.role is None or (who is not None and _role(who).allows(access.role))
            elsewhere = access.owner is not None and who is not None and who[0] != "a"
            changes = route.method in UNSAFE and access.role is not None and may and not elsewhere
            if changes and (changed or who[0] != "a"):
                continue  # one change per route, by team A's smallest role that may
            status, body, location = _request(studio, sessions, route, url, who)
            expected = _expected(route, access, who, may, elsewhere)
            problem = _judge(expected, route.method, status, location)
            if expected == "allowed" and route.key == "GET live.job_events":
                problem = problem or (None if body.startswith("retry:") else "no event stream")
            if problem:
                caller = who or "anonymous"
                wrong.append(f"{route} as {caller}: {problem} ({status}: {body[:120]!r})")
            changed = changed or changes
    assert wrong == [], "\n".join(wrong)


def _role(who: str) -> Role:
    return Role(who.split("-", 1)[1])


def _expected(
    route: MappedRoute, access: Access, who: str | None, may: bool, elsewhere: bool
) -> str:
    if access.role is None:
        return "public"
    if who is None:
        return "401" if route.rule.startswith("/api/") else "login"
    if not may:
        return "403"
    return "404" if elsewhere else "allowed"


def _judge(expected: str, method: str, status: int, location: str) -> str | None:
    to_login = status == 302 and location.startswith("/login?next=")  # as _require_login sends
    if status >= 500 and status != 503:  # 503: a probe saying a service is down is honest
        return "a server error"
    if expected == "public":
        if to_login or status == 403 or (method == "GET" and status >= 400 and status != 503):
            return "refused on a public route"
        return None  # a login posted empty is a 400 or 401: the form's answer, not a refusal
    if expected == "login":
        return None if to_login else "expected a redirect to /login"
    if expected in ("401", "403", "404"):
        return None if str(status) == expected else f"expected {expected}"
    if to_login or status in (401, 403, 404):
        return "refused, but this caller may"
    return None


def _request(
    studio: Studio, sessions: dict[str, Any], route: MappedRoute, url: str, who: str | None
) -> tuple[int, str, str]:
    """One request as `who`; the answer's status, the start of its body and its Location."""
    headers: dict[str, str] = {}
    kwargs: dict[str, object] = {}
    if route.rule.startswith("/api/"):
        client = studio.client()
        if who is not None:
            headers["Authorization"] = f"Bearer {studio.tokens[who]}"
        if route.method in UNSAFE:
            kwargs["json"] = {}
    else:
        client, csrf = sessions[who] if who is not None else (studio.client(), "")
        if route.method in UNSAFE:
            headers["X-CSRF-Token"] = csrf
            kwargs["data"] = {}
    response = client.open(url, method=route.method, headers=headers, buffered=False, **kwargs)
    try:
        if response.mimetype == "text/event-stream":
            body = _first_chunk(response)
        else:
            textual = response.is_json or response.mimetype.startswith("text/")
            body = (
                response.get_data(as_text=True)
                if textual
                else f"({len(response.get_data())} bytes)"
            )
        return response.status_code, body, response.headers.get("Location", "")
    finally:
        response.close()


def _first_chunk(response: Any) -> str:
    """The stream's first event, waited for at most SSE_READ_S: a stream never blocks the walk."""
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(next(iter(response.response))), daemon=True)
    reader.start()
    reader.join(SSE_READ_S)
    return got[0].decode() if got else "(no event within the read timeout)"
