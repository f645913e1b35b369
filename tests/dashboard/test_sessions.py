"""Logins that end: a token past its expiry answers 401 and says so, a logout ends saved copies
of the session cookie on the server, and last use is noted at most once a minute."""

from __future__ import annotations

from datetime import timedelta

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from farm.auth import create_account, ensure_project, parse_lifetime
from farm.db.models import ApiToken, Role
from farm.db.types import utcnow
from farm.errors import InputError
from tests.fixtures.dashboard import Studio

PASSWORD = "correct horse battery staple"


def token_row(studio: Studio, name: str) -> ApiToken:
    with studio.farm.sessions() as session:
        return session.scalars(select(ApiToken).where(ApiToken.name == name)).one()


def age_token(studio: Studio, name: str, **changes: object) -> None:
    with studio.farm.sessions.begin() as session:
        token = session.scalars(select(ApiToken).where(ApiToken.name == name)).one()
        for field, value in changes.items():
            setattr(token, field, value)


def saved_cookie(client: FlaskClient) -> str:
    return client.get_cookie("farm_session").value


def test_a_token_made_to_expire_says_so_when_it_has(studio: Studio):
    made = studio.call(
        "POST",
        "/api/v1/tokens",
        "a-admin",
        json={"name": "contractor", "role": "viewer", "expires_in": "30d"},
    )
    assert made.status_code == 201
    lives = made.json["expires"]
    assert lives is not None
    secret = made.json["secret"]
    bearer = {"Authorization": f"Bearer {secret}"}
    assert studio.client().get("/api/v1/me", headers=bearer).status_code == 200

    age_token(studio, "contractor", expires=utcnow() - timedelta(seconds=1))
    refused = studio.client().get("/api/v1/me", headers=bearer)

    assert refused.status_code == 401
    assert "expired at" in refused.json["error"] and "contractor" in refused.json["error"]
    assert secret not in refused.json["error"]
    unknown = studio.client().get("/api/v1/me", headers={"Authorization": "Bearer rf_nothing"})
    assert "expired" not in unknown.json["error"]  # an unknown token is told nothing more


def test_a_session_opened_with_a_token_ends_when_the_token_expires(studio: Studio):
    client = studio.client()
    studio.log_in(client, "a-viewer")
    assert client.get("/jobs").status_code == 200

    age_token(studio, "a viewer", expires=utcnow() - timedelta(seconds=1))

    assert client.get("/jobs").status_code == 302
    client.get("/login")
    with client.session_transaction() as session:
        csrf = session["csrf_token"]
    login = client.post("/login", data={"token": studio.tokens["a-viewer"], "csrf_token": csrf})
    assert login.status_code == 401 and "expired at" in login.text


@pytest.mark.parametrize("value", ["30", "0d", "-1d", "30 days", "d", "600w", ""])
def test_a_lifetime_is_a_number_and_a_unit(value: str):
    with pytest.raises(InputError, match=r"e\.g\. 30d"):
        parse_lifetime(value)


def test_lifetimes_read_as_written():
    assert parse_lifetime("90m") == timedelta(minutes=90)
    assert parse_lifetime("12H") == timedelta(hours=12)
    assert parse_lifetime("30d") == timedelta(days=30)


def test_an_api_lifetime_that_is_not_one_is_a_400(studio: Studio):
    body = {"name": "ci", "role": "viewer", "expires_in": "forever"}
    before = studio.rows()
    refused = studio.call("POST", "/api/v1/tokens", "a-admin", json=body)
    assert refused.status_code == 400 and "e.g. 30d" in refused.json["error"]
    assert studio.rows() == before


def test_the_admin_page_makes_expiring_tokens_and_lists_last_use(studio: Studio):
    client = studio.client()
    csrf = studio.log_in(client, "a-admin")

    made = client.post(
        "/admin/tokens",
        data={"name": "render bot", "role": "artist", "expires": "12h", "csrf_token": csrf},
    )

    assert made.status_code == 201
    token = token_row(studio, "render bot")
    assert token.expires is not None
    assert timedelta(hours=11, minutes=59) < token.expires - utcnow() <= timedelta(hours=12)
    page = client.get("/admin/").text
    assert "Last used" in page and "Expires" in page and "never" in page
    age_token(studio, "render bot", expires=utcnow() - timedelta(seconds=1))
    assert "expired</span>" in client.get("/admin/").text


def test_last_use_is_noted_at_most_once_a_minute(studio: Studio):
    assert token_row(studio, "b viewer").last_used is None
    studio.call("GET", "/api/v1/me", "b-viewer")
    first = token_row(studio, "b viewer").last_used
    assert first is not None and utcnow() - first < timedelta(seconds=10)

    studio.call("GET", "/api/v1/me", "b-viewer")
    assert token_row(studio, "b viewer").last_used == first  # no write within the minute

    age_token(studio, "b viewer", last_used=first - timedelta(minutes=2))
    studio.call("GET", "/api/v1/me", "b-viewer")
    assert token_row(studio, "b viewer").last_used > first
    listed = studio.call("GET", "/api/v1/tokens", "b-admin").json["items"]
    assert next(t for t in listed if t["name"] == "b viewer")["last_used"] is not None


def test_a_saved_cookie_stops_working_after_logout(studio: Studio):
    client = studio.client()
    csrf = studio.log_in(client, "a-artist")
    cookie = saved_cookie(client)

    assert client.post("/logout", data={"csrf_token": csrf}).status_code == 302

    replay = studio.client()
    replay.set_cookie("farm_session", cookie)
    assert replay.get("/jobs").status_code == 302  # to the login page
    assert replay.get("/api/v1/me").status_code == 401
    studio.log_in(client, "a-artist")  # logging in again opens a new session
    assert client.get("/jobs").status_code == 200


def test_a_saved_account_cookie_stops_working_after_logout_and_after_disabling(studio: Studio):
    with studio.farm.sessions.begin() as session:
        project = ensure_project(session, "team-a")
        account_id = create_account(session, project, "alice", PASSWORD, Role.ARTIST).id

    def logged_in() -> tuple[FlaskClient, str]:
        client = studio.client()
        client.get("/login")
        with client.session_transaction() as session:
            csrf = session["csrf_token"]
        form = {"username": "alice", "password": PASSWORD, "csrf_token": csrf}
        assert client.post("/login", data=form).status_code == 302
        with client.session_transaction() as session:
            return client, session["csrf_token"]

    client, csrf = logged_in()
    cookie = saved_cookie(client)
    client.post("/logout", data={"csrf_token": csrf})
    replay = studio.client()
    replay.set_cookie("farm_session", cookie)
    assert replay.get("/jobs").status_code == 302

    client, _ = logged_in()
    assert client.get("/jobs").status_code == 200
    disabled = studio.call("DELETE", f"/api/v1/accounts/{account_id}", "a-admin")
    assert disabled.status_code == 204
    assert client.get("/jobs").status_code == 302


def test_a_cookie_from_before_session_generations_ends(studio: Studio):
    client = studio.client()
    studio.log_in(client, "a-artist")
    with client.session_transaction() as session:
        session["principal"] = session["principal"][:2]  # [kind, id], as cookies were

    assert client.get("/jobs").status_code == 302
