"""Tokens and password accounts: made by an admin, used to log in, revoked or disabled with
immediate effect; the dashboard's session is signed and every form carries a CSRF token."""

from __future__ import annotations

import pytest

from farm.auth import authenticate_token, hash_password, verify_password
from tests.fixtures.dashboard import Studio

PASSWORD = "correct horse battery staple"


def test_an_admin_makes_a_token_that_works_once_shown(studio: Studio):
    made = studio.call("POST", "/api/v1/tokens", "a-admin", json={"name": "ci", "role": "artist"})

    assert made.status_code == 201
    secret = made.json["secret"]
    assert secret.startswith(made.json["prefix"]) and made.json["role"] == "artist"
    me = studio.client().get("/api/v1/me", headers={"Authorization": f"Bearer {secret}"})
    assert me.json == {"project": "team-a", "role": "artist", "kind": "token", "name": "ci"}
    listed = studio.call("GET", "/api/v1/tokens", "a-admin").json["items"]
    assert all("secret" not in token for token in listed)
    assert {t["name"] for t in listed} == {"a viewer", "a artist", "a admin", "ci"}


def test_only_the_hash_of_a_token_is_kept(studio: Studio):
    from sqlalchemy import select

    from farm.db.models import ApiToken

    secret = studio.tokens["a-artist"]
    with studio.farm.sessions() as session:
        stored = session.scalars(select(ApiToken.secret_sha256)).all()
        assert secret not in stored and all(len(h) == 64 for h in stored)
        assert authenticate_token(session, secret + "x") is None


def test_a_revoked_token_is_refused_at_once(studio: Studio):
    client = studio.client()
    studio.log_in(client, "a-viewer")
    token_id = next(
        t["id"]
        for t in studio.call("GET", "/api/v1/tokens", "a-admin").json["items"]
        if t["name"] == "a viewer"
    )

    assert studio.call("DELETE", f"/api/v1/tokens/{token_id}", "a-admin").status_code == 204

    assert studio.call("GET", "/api/v1/me", "a-viewer").status_code == 401
    assert client.get("/jobs").status_code == 302  # the session opened with it ended too


def test_an_admin_cannot_revoke_the_token_in_use(studio: Studio):
    token_id = next(
        t["id"]
        for t in studio.call("GET", "/api/v1/tokens", "a-admin").json["items"]
        if t["name"] == "a admin"
    )
    response = studio.call("DELETE", f"/api/v1/tokens/{token_id}", "a-admin")
    assert response.status_code == 409
    assert studio.call("GET", "/api/v1/me", "a-admin").status_code == 200


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": "", "role": "artist"}, "body.name"),
        ({"name": "x", "role": "owner"}, "body.role"),
        ({"name": "x"}, "body.role"),
        ({"name": "x", "role": "artist", "project": "team-b"}, "body.project"),
    ],
)
def test_bad_token_bodies_are_400(studio: Studio, body: dict, message: str):
    before = studio.rows()
    response = studio.call("POST", "/api/v1/tokens", "a-admin", json=body)
    assert response.status_code == 400 and message in response.json["error"]
    assert studio.rows() == before


def test_a_password_account_logs_in_to_the_dashboard(studio: Studio):
    account = {"username": "alice", "password": PASSWORD, "role": "viewer"}
    made = studio.call("POST", "/api/v1/accounts", "a-admin", json=account)
    assert made.status_code == 201 and made.json["username"] == "alice"
    client = studio.client()
    client.get("/login")
    with client.session_transaction() as session:
        csrf = session["csrf_token"]

    wrong = client.post(
        "/login", data={"username": "alice", "password": "wrong password!", "csrf_token": csrf}
    )
    assert wrong.status_code == 401 and "did not match" in wrong.text
    right = client.post(
        "/login",
        data={"username": "alice", "password": PASSWORD, "csrf_token": csrf, "next": "/farm"},
    )
    assert right.status_code == 302 and right.location == "/farm"
    page = client.get("/jobs")
    assert page.status_code == 200 and "alice · viewer · team-a" in page.text
    assert "New story" not in page.text  # a viewer is not offered what it may not do
    assert client.get("/stories/new").status_code == 403

    studio.call("DELETE", f"/api/v1/accounts/{made.json['id']}", "a-admin")
    assert client.get("/jobs").status_code == 302  # disabled: the session is over


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"username": "bob", "password": "short", "role": "artist"}, "body.password"),
        ({"username": "bob smith", "password": PASSWORD, "role": "artist"}, "username"),
        ({"username": "a-admin", "password": PASSWORD, "role": "root"}, "body.role"),
    ],
)
def test_bad_account_bodies_are_400(studio: Studio, body: dict, message: str):
    before = studio.rows()
    response = studio.call("POST", "/api/v1/accounts", "a-admin", json=body)
    assert response.status_code == 400 and message in response.json["error"]
    assert studio.rows() == before


def test_usernames_are_unique_across_projects(studio: Studio):
    account = {"username": "alice", "password": PASSWORD, "role": "viewer"}
    assert studio.call("POST", "/api/v1/accounts", "a-admin", json=account).status_code == 201
    taken = studio.call("POST", "/api/v1/accounts", "b-admin", json=account)
    assert taken.status_code == 400 and "taken" in taken.json["error"]


def test_passwords_are_scrypt_hashed_with_a_salt():
    first, second = hash_password(PASSWORD), hash_password(PASSWORD)
    assert first != second and first.startswith("scrypt$32768$8$1$")
    assert verify_password(PASSWORD, first) and not verify_password(PASSWORD + "!", first)
    assert not verify_password(PASSWORD, "md5$whatever")


def test_posts_on_a_session_need_the_csrf_token(studio: Studio):
    client = studio.client()
    csrf = studio.log_in(client)
    before = studio.rows()

    forged = client.post("/api/v1/tokens", json={"name": "x", "role": "viewer"})
    assert forged.status_code == 400 and "security token" in forged.json["error"]
    wrong = client.post("/logout", data={"csrf_token": "guess"})
    assert wrong.status_code == 400
    assert studio.rows() == before

    honest = client.post("/logout", data={"csrf_token": csrf})
    assert honest.status_code == 302
    assert client.get("/jobs").status_code == 302  # logged out


def test_login_sends_only_to_this_site(studio: Studio):
    client = studio.client()
    client.get("/login")
    with client.session_transaction() as session:
        csrf = session["csrf_token"]
    for target, expected in [("//evil.example/x", "/jobs"), ("https://evil.example", "/jobs")]:
        response = client.post(
            "/login",
            data={"token": studio.tokens["a-viewer"], "csrf_token": csrf, "next": target},
        )
        assert response.location == expected
        with client.session_transaction() as session:
            csrf = session["csrf_token"]


def test_the_session_cookie_is_signed_and_http_only(studio: Studio):
    client = studio.client()
    studio.log_in(client)
    cookie = client.get_cookie("farm_session")
    assert cookie.http_only and cookie.same_site == "Lax"
    client.set_cookie("farm_session", cookie.value[:-2] + "xx")  # tampered: not logged in
    assert client.get("/jobs").status_code == 302
