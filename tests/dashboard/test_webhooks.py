"""The webhook a job names: one signed POST when the job finishes, delivered carefully to a URL
that came from outside (retries, a timeout, no redirects, http(s) only)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from farm.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, deliver, signature
from tests.fixtures.dashboard import Studio, finish_renders, make_character, story_body


@dataclass
class Receiver:
    """A studio's endpoint on 127.0.0.1: answers with `statuses` in turn, keeps what it got."""

    url: str
    statuses: list[int] = field(default_factory=list)
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    delay_s: float = 0.0


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
                self.send_header("Location", f"{state.url}/elsewhere")
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
    assert deliver(receiver.url, {"event": "job.finished", "job": "j1"}, secret="s3cret")

    ((headers, body),) = receiver.received
    assert json.loads(body) == {"event": "job.finished", "job": "j1"}
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Farm-Event"] == "job.finished"
    expected = signature("s3cret", headers[TIMESTAMP_HEADER], body)
    assert headers[SIGNATURE_HEADER] == expected and expected.startswith("sha256=")


def test_without_a_secret_nothing_is_signed(receiver: Receiver):
    assert deliver(receiver.url, {"event": "job.finished"}, secret=None)
    assert SIGNATURE_HEADER not in receiver.received[0][0]


def test_server_errors_are_retried_with_the_same_delivery_id(receiver: Receiver):
    receiver.statuses = [500, 503]

    assert deliver(receiver.url, {"event": "x"}, secret=None, attempts=3, backoff_s=0.01)

    deliveries = {headers["X-Farm-Delivery"] for headers, _ in receiver.received}
    assert len(receiver.received) == 3 and len(deliveries) == 1


def test_client_errors_are_not_retried(receiver: Receiver):
    receiver.statuses = [404]
    assert not deliver(receiver.url, {"event": "x"}, secret=None, backoff_s=0.01)
    assert len(receiver.received) == 1


def test_redirects_are_not_followed(receiver: Receiver):
    receiver.statuses = [302]
    assert not deliver(receiver.url, {"event": "x"}, secret=None, backoff_s=0.01)
    assert [h["Host"] for h, _ in receiver.received] == [receiver.url.split("/")[2]]
    assert len(receiver.received) == 1  # /elsewhere never asked


def test_a_slow_receiver_times_out_and_is_retried(receiver: Receiver):
    receiver.delay_s = 1.0
    assert not deliver(
        receiver.url, {"event": "x"}, secret=None, timeout_s=0.2, attempts=2, backoff_s=0.01
    )
    assert len(receiver.received) == 2


@pytest.mark.parametrize(
    "url", ["ftp://example.com/h", "file:///etc/passwd", "gopher://x", "http:///nohost", "x"]
)
def test_only_http_urls_are_called(url: str):
    assert not deliver(url, {"event": "x"}, secret=None)


def test_nothing_listens_is_a_failure_not_an_exception():
    assert not deliver("http://127.0.0.1:9/h", {"event": "x"}, secret=None, attempts=1)


def test_the_webhook_posts_once_the_finished_jobs_outputs_are_built(
    studio: Studio, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
):
    from farm.lifecycle import close_job
    from farm.queue.app import FINALIZE_JOB
    from workers.finalize import finalize_job

    monkeypatch.setenv("FARM_WEBHOOK_SECRET", "studio-secret")
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
