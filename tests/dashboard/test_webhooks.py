"""The webhook a job names: one signed POST when the job finishes, delivered carefully to a URL
that came from outside (retries, a timeout, no redirects, http(s) only, never to an internal
address). Names resolve through a stub here, and the only traffic is to a receiver on
127.0.0.1, which the settings allow where a test must reach it."""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from farm.errors import InputError
from farm.settings import Settings
from farm.webhooks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    check_webhook_url,
    deliver,
    signature,
)
from tests.fixtures.dashboard import (
    Studio,
    finish_renders,
    make_character,
    story_body,
    studio_settings,
)

LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"),)
STRICT = studio_settings(Path("/nonexistent"), "sqlite://")
LOCAL = replace(STRICT, webhook_allow_networks=LOOPBACK)  # the receiver's own network
# What the stub DNS answers: the names of the attacks, and public ones.
NAMES = {
    "loopback.test": ["127.0.0.1"],
    "private.test": ["10.0.0.1"],
    "metadata.test": ["169.254.169.254"],
    "ipv6-loopback.test": ["::1"],
    "mapped.test": ["::ffff:127.0.0.1"],
    "ec2-v6.test": ["fd00:ec2::254"],
    "multicast.test": ["239.1.2.3"],
    "half-private.test": ["93.184.215.14", "10.0.0.1"],
    "public.test": ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"],
}


def stub_dns(host: str, port: int) -> list[str]:
    if host not in NAMES:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return NAMES[host]


@dataclass
class Receiver:
    """A studio's endpoint on 127.0.0.1: answers with `statuses` in turn, keeps what it got."""

    url: str
    statuses: list[int] = field(default_factory=list)
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    delay_s: float = 0.0
    location: str = ""  # where its redirects point; its own /elsewhere when empty


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.received.append((dict(self.headers), body))
            threading.Event().wait(state.delay_s)
            status = state.statuses.pop(0) if state.statuses else 200
            self.send_response(status)
            if status in (301, 302, 307):
                self.send_header("Location", state.location or f"{state.url}/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_port}/hooks/farm"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    thread.join(5)


def test_a_delivery_is_signed_over_timestamp_and_body(receiver: Receiver):
    assert deliver(
        receiver.url, {"event": "job.finished", "job": "j1"}, secret="s3cret", settings=LOCAL
    )

    ((headers, body),) = receiver.received
    assert json.loads(body) == {"event": "job.finished", "job": "j1"}
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Farm-Event"] == "job.finished"
    expected = signature("s3cret", headers[TIMESTAMP_HEADER], body)
    assert headers[SIGNATURE_HEADER] == expected and expected.startswith("sha256=")


def test_without_a_secret_nothing_is_signed(receiver: Receiver):
    assert deliver(receiver.url, {"event": "job.finished"}, secret=None, settings=LOCAL)
    assert SIGNATURE_HEADER not in receiver.received[0][0]


def test_server_errors_are_retried_with_the_same_delivery_id(receiver: Receiver):
    receiver.statuses = [500, 503]

    assert deliver(
        receiver.url, {"event": "x"}, secret=None, settings=LOCAL, attempts=3, backoff_s=0.01
    )

    deliveries = {headers["X-Farm-Delivery"] for headers, _ in receiver.received}
    assert len(receiver.received) == 3 and len(deliveries) == 1


def test_client_errors_are_not_retried(receiver: Receiver):
    receiver.statuses = [404]
    assert not deliver(receiver.url, {"event": "x"}, secret=None, settings=LOCAL, backoff_s=0.01)
    assert len(receiver.received) == 1


def test_redirects_are_not_followed(receiver: Receiver):
    receiver.statuses = [302]
    assert not deliver(receiver.url, {"event": "x"}, secret=None, settings=LOCAL, backoff_s=0.01)
    assert [h["Host"] for h, _ in receiver.received] == [receiver.url.split("/")[2]]
    assert len(receiver.received) == 1  # /elsewhere never asked


def test_a_slow_receiver_times_out_and_is_retried(receiver: Receiver):
    receiver.delay_s = 1.0
    assert not deliver(
        receiver.url,
        {"event": "x"},
        secret=None,
        settings=LOCAL,
        timeout_s=0.2,
        attempts=2,
        backoff_s=0.01,
    )
    assert len(receiver.received) == 2


@pytest.mark.parametrize(
    "url", ["ftp://example.com/h", "file:///etc/passwd", "gopher://x", "http:///nohost", "x"]
)
def test_only_http_urls_are_called(url: str):
    assert not deliver(url, {"event": "x"}, secret=None, settings=LOCAL)


def test_nothing_listens_is_a_failure_not_an_exception():
    assert not deliver(
        "http://127.0.0.1:9/h", {"event": "x"}, secret=None, settings=LOCAL, attempts=1
    )


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://loopback.test/h", "127.0.0.1, a loopback address"),
        ("http://private.test:8080/h", "10.0.0.1, a private address"),
        ("http://metadata.test/latest/meta-data/", "169.254.169.254, a cloud metadata service"),
        ("http://ipv6-loopback.test/h", "::1, a loopback address"),
        ("http://mapped.test/h", "::ffff:127.0.0.1, a loopback address"),
        ("http://ec2-v6.test/h", "fd00:ec2::254, a cloud metadata service"),
        ("http://multicast.test/h", "239.1.2.3, a multicast address"),
        ("https://half-private.test/h", "10.0.0.1, a private address"),  # one bad address is enough
        ("http://[::1]:6379/", "::1, a loopback address"),
        ("http://169.254.169.254/latest/meta-data/", "a cloud metadata service"),
        ("http://[::ffff:a9fe:a9fe]/", "a cloud metadata service"),  # 169.254.169.254, mapped
        ("http://[64:ff9b::7f00:1]/", "a loopback address"),  # NAT64 of 127.0.0.1
        ("http://[2002:a00:1::]/", "a private address"),  # 6to4 of 10.0.0.1
        ("http://0.0.0.0:8000/", "the unspecified address"),
        ("http://100.64.0.9/", "an address that is not public"),  # carrier-grade NAT
    ],
)
def test_a_host_that_resolves_inside_is_refused_at_submit(url: str, why: str):
    with pytest.raises(InputError, match="FARM_WEBHOOK_ALLOW_NETWORKS") as refused:
        check_webhook_url(url, STRICT, stub_dns)
    assert why in str(refused.value)


def test_public_names_pass_and_an_unresolved_one_waits_for_delivery():
    target = check_webhook_url("https://public.test/hooks?job=1", STRICT, stub_dns)
    assert target.addresses == tuple(NAMES["public.test"])
    assert (target.host, target.port, target.path) == ("public.test", 443, "/hooks?job=1")
    assert check_webhook_url("https://not-yet.test/h", STRICT, stub_dns).addresses == ()


def test_a_studios_own_range_is_allowed_but_never_the_metadata_service():
    own = replace(
        STRICT,
        webhook_allow_networks=(
            ipaddress.ip_network("10.0.0.0/8"),
            ipaddress.ip_network("169.254.0.0/16"),
        ),
    )
    assert check_webhook_url("http://private.test/h", own, stub_dns).addresses == ("10.0.0.1",)
    with pytest.raises(InputError, match="metadata"):
        check_webhook_url("http://metadata.test/h", own, stub_dns)
    with pytest.raises(InputError, match="loopback"):
        check_webhook_url("http://loopback.test/h", own, stub_dns)


def test_the_allowed_networks_setting_is_read_and_checked():
    env = {"FARM_WEBHOOK_ALLOW_NETWORKS": "10.20.0.0/16, fd12:3456::/48,192.168.1.7"}
    assert [str(n) for n in Settings.from_env(env).webhook_allow_networks] == [
        "10.20.0.0/16",
        "fd12:3456::/48",
        "192.168.1.7/32",
    ]
    with pytest.raises(InputError, match=r"FARM_WEBHOOK_ALLOW_NETWORKS: '10\.0\.0\.1/8'"):
        Settings.from_env({"FARM_WEBHOOK_ALLOW_NETWORKS": "10.0.0.1/8"})  # host bits set


def test_delivery_judges_the_name_again_and_sends_nothing_inside(receiver: Receiver):
    port = receiver.url.split(":")[2].split("/")[0]
    # Public at submit, rebound to the receiver's 127.0.0.1 at delivery.
    answers = iter([["93.184.215.14"], ["127.0.0.1"]])
    url = f"http://rebinding.test:{port}/hooks/farm"
    assert check_webhook_url(url, STRICT, lambda host, p: next(answers)).addresses
    assert not deliver(
        url, {"event": "x"}, secret=None, settings=STRICT, resolve=lambda h, p: next(answers)
    )
    assert receiver.received == []


def test_delivery_connects_to_the_address_it_checked(receiver: Receiver):
    """The name exists only in the stub: a second lookup by the HTTP client would fail."""
    port = receiver.url.split(":")[2].split("/")[0]
    lookups = []

    def once(host: str, port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"]

    url = f"http://hooks.studio.test:{port}/hooks/farm"
    assert deliver(url, {"event": "x"}, secret=None, settings=LOCAL, resolve=once)
    assert lookups == ["hooks.studio.test"]
    assert receiver.received[0][0]["Host"] == f"hooks.studio.test:{port}"


def test_a_redirect_to_the_metadata_service_is_not_followed(receiver: Receiver):
    receiver.statuses = [302]
    receiver.location = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"

    assert not deliver(receiver.url, {"event": "x"}, secret=None, settings=LOCAL, backoff_s=0.01)
    assert len(receiver.received) == 1


def test_the_api_refuses_an_internal_webhook_with_a_400(studio: Studio):
    body = story_body(make_character(studio), webhook_url="http://localhost:6379/")
    before = studio.rows()

    refused = studio.call("POST", "/api/v1/jobs", json=body)

    assert refused.status_code == 400
    assert "a loopback address" in refused.json["error"]
    assert studio.rows() == before


def test_the_webhook_posts_once_the_finished_jobs_outputs_are_built(
    studio: Studio, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
):
    from farm.lifecycle import close_job
    from farm.queue.app import FINALIZE_JOB
    from workers.finalize import finalize_job

    monkeypatch.setenv("FARM_WEBHOOK_SECRET", "studio-secret")
    studio.farm.settings = replace(studio.farm.settings, webhook_allow_networks=LOOPBACK)
    character_id = make_character(studio)
    body = story_body(character_id, webhook_url=receiver.url)
    job_id = studio.call("POST", "/api/v1/jobs", json=body).json["id"]
    finish_renders(studio, job_id)  # closes the job as the worker's transaction does
    with studio.farm.sessions.begin() as session:  # reopen it: the worker's call closes it
        from farm.db.models import Job

        session.get(Job, job_id).reopen()

    sent = []
    monkeypatch.setattr(studio.farm.celery, "send_task", lambda *a, **k: sent.append((a, k)))
    close_job(studio.farm, job_id)
    assert sent[0][0] == (FINALIZE_JOB,) and sent[0][1]["args"] == [job_id]
    assert receiver.received == []  # the webhook waits for the job's outputs
    finalize_job(studio.farm, job_id)  # what the control queue's finalize task runs

    ((headers, raw),) = receiver.received
    payload = json.loads(raw)
    assert payload["event"] == "job.finished" and payload["job"] == job_id
    assert payload["status"] == "succeeded" and payload["counts"]["done"] == 3
    assert headers[SIGNATURE_HEADER] == signature("studio-secret", headers[TIMESTAMP_HEADER], raw)
