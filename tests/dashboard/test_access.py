"""Tokens, roles and projects on every API route: no token is 401, a role too small is 403 and
changes nothing, another team's rows are 404 as if they did not exist."""

from __future__ import annotations

from dataclasses import replace

import pytest

from farm.db.models import Role
from farm.queue.app import make_celery
from tests.dashboard.routes import NOWHERE, ROUTES, Route
from tests.fixtures.dashboard import (
    Studio,
    finish_renders,
    make_character,
    make_studio,
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
    assert ready.json == {"status": "ready", "database": "ok", "storage": "ok", "broker": "ok"}

    nowhere = replace(studio.farm.settings, broker_url="redis://127.0.0.1:9/0")  # port 9: closed
    studio.farm.__dict__["celery"] = make_celery(nowhere)
    unready = client.get("/readyz")
    assert unready.status_code == 503 and unready.json["broker"].startswith("unavailable")
    studio.farm.close()


def test_another_teams_work_shows_as_busy_without_its_ids(studio: Studio):
    from sqlalchemy import select

    from farm.db.models import Shard, Worker
    from farm.db.states import WorkerStatus

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
