"""Failed logins are limited per client address and per account, over a sliding window kept in
the farm's Redis: past the limit a login answers 429 with Retry-After, without checking the
password, until the oldest failure leaves the window."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from dashboard.ratelimit import KEY_PREFIX
from farm.auth import create_account, ensure_project
from farm.db.models import Role
from tests.fixtures.dashboard import Studio
from tests.fixtures.farm_cluster import REDIS_SERVER_URL, dedicated_redis_db

PASSWORD = "correct horse battery staple"


@pytest.fixture
def redis_url() -> Iterator[str]:
    with dedicated_redis_db(REDIS_SERVER_URL) as url:
        yield url


@pytest.fixture
def limited(studio: Studio, redis_url: str) -> Studio:
    """The studio with its events (and so its login windows) on Redis, and small limits."""
    studio.farm.settings = replace(
        studio.farm.settings,
        events_url=redis_url,
        login_window_s=60,
        login_failures_per_address=5,
        login_failures_per_account=3,
    )
    with studio.farm.sessions.begin() as session:
        project = ensure_project(session, "team-a")
        for username in ("alice", "bob"):
            create_account(session, project, username, PASSWORD, Role.ARTIST)
    return studio


def attempt(
    client: FlaskClient, username: str, password: str, address: str = "203.0.113.7", **kw: Any
) -> Any:
    client.get("/login")
    with client.session_transaction() as session:
        csrf = session["csrf_token"]
    form = {"username": username, "password": password, "csrf_token": csrf}
    return client.post("/login", data=form, environ_base={"REMOTE_ADDR": address}, **kw)


def test_an_account_is_blocked_after_its_failures_from_any_address(limited: Studio):
    client = limited.client()
    for n in range(3):
        assert attempt(client, "alice", "wrong password", f"198.51.100.{n}").status_code == 401

    blocked = attempt(client, "alice", PASSWORD, "198.51.100.99")  # right, but too late

    assert blocked.status_code == 429
    assert 55 <= int(blocked.headers["Retry-After"]) <= 60
    assert "Too many failed logins" in blocked.text and "try again in" in blocked.text
    assert attempt(client, "ALICE", PASSWORD).status_code == 429  # usernames fold case
    assert attempt(client, "bob", PASSWORD, "198.51.100.0").status_code == 302  # others may


def test_an_address_is_blocked_after_failures_on_many_accounts(limited: Studio, redis_url: str):
    client = limited.client()
    for username in ("alice", "bob", "carol", "dave", "erin"):  # unknown names count as well
        assert attempt(client, username, "wrong password").status_code == 401

    blocked = attempt(client, "bob", PASSWORD)

    assert blocked.status_code == 429 and "Retry-After" in blocked.headers
    assert attempt(client, "bob", PASSWORD, "192.0.2.50").status_code == 302
    windows = redis.Redis.from_url(redis_url)
    assert windows.zcard(f"{KEY_PREFIX}address:203.0.113.7") == 5
    assert 0 < windows.ttl(f"{KEY_PREFIX}address:203.0.113.7") <= 60


def test_a_json_client_gets_a_json_429(limited: Studio):
    client = limited.client()
    for _ in range(3):
        attempt(client, "alice", "wrong password")

    blocked = attempt(client, "alice", PASSWORD, headers={"Accept": "application/json"})

    assert blocked.status_code == 429
    assert blocked.json["error"].startswith("Too many failed logins")
    assert int(blocked.headers["Retry-After"]) > 0


def test_successful_logins_are_not_counted(limited: Studio):
    client = limited.client()
    for _ in range(6):
        assert attempt(client, "alice", PASSWORD).status_code == 302


def test_the_window_slides(limited: Studio):
    limited.farm.settings = replace(limited.farm.settings, login_window_s=2)
    client = limited.client()
    for _ in range(3):
        attempt(client, "alice", "wrong password")
    blocked = attempt(client, "alice", PASSWORD)
    assert blocked.status_code == 429

    time.sleep(int(blocked.headers["Retry-After"]) + 0.1)

    assert attempt(client, "alice", PASSWORD).status_code == 302


def test_token_logins_count_against_the_address(limited: Studio):
    client = limited.client()
    for _ in range(5):
        client.get("/login")
        with client.session_transaction() as session:
            csrf = session["csrf_token"]
        form = {"token": "rf_guessed", "csrf_token": csrf}
        assert client.post("/login", data=form).status_code == 401
    assert attempt(client, "alice", PASSWORD, "127.0.0.1").status_code == 429


def test_without_redis_one_process_keeps_the_windows(studio: Studio):
    studio.farm.settings = replace(studio.farm.settings, login_failures_per_account=2)
    with studio.farm.sessions.begin() as session:
        create_account(session, ensure_project(session, "team-a"), "alice", PASSWORD, Role.VIEWER)
    client = studio.client()
    for _ in range(2):
        assert attempt(client, "alice", "wrong password").status_code == 401
    assert attempt(client, "alice", PASSWORD).status_code == 429


def test_behind_a_proxy_the_client_is_read_from_x_forwarded_for(limited: Studio):
    limited.farm.settings = replace(limited.farm.settings, trusted_proxies=1)
    client = limited.client()
    proxy = "10.0.0.5"  # every request arrives from the Ingress
    for n in range(5):
        forwarded = {"X-Forwarded-For": f"192.0.2.{n}, 203.0.113.9"}  # the first part is made up
        assert attempt(client, f"user{n}", "wrong", proxy, headers=forwarded).status_code == 401

    assert attempt(client, "bob", PASSWORD, proxy, headers=forwarded).status_code == 429
    other = {"X-Forwarded-For": "203.0.113.10"}  # another person behind the same Ingress
    assert attempt(client, "bob", PASSWORD, proxy, headers=other).status_code == 302


def test_a_next_with_a_line_break_is_ignored_not_a_500(studio: Studio):
    client = studio.client()
    client.get("/login")
    with client.session_transaction() as session:
        csrf = session["csrf_token"]
    form = {
        "token": studio.tokens["a-viewer"],
        "csrf_token": csrf,
        "next": "/characters\r\nSet-Cookie: planted=1",
    }

    response = client.post("/login", data=form)

    assert response.status_code == 302
    assert response.headers["Location"] == "/jobs"  # the default, not the bad target
    assert "planted" not in response.headers.get("Set-Cookie", "")


def test_without_redis_aged_windows_are_dropped(monkeypatch: pytest.MonkeyPatch):
    from dashboard import ratelimit

    monkeypatch.setattr(ratelimit, "MEMORY_WINDOWS", 3)
    limits = ratelimit.LoginLimits(window_s=1, per_address=5, per_account=5)
    for n in range(3):
        limits.failed(f"192.0.2.{n}", None)
    time.sleep(1.1)

    limits.failed("192.0.2.99", None)

    assert limits.wait_s("192.0.2.99", None) == 0
    assert len(limits._memory) == 1
