"""Live progress over server-sent events: woken by Redis events when they are configured, by
reading SQL every tick when they are not; a heartbeat comment while nothing happens."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from http.client import HTTPConnection, HTTPResponse
from pathlib import Path

import pytest
from sqlalchemy import update

from dashboard.app import create_app
from dashboard.live import JobStream
from farm.context import Farm
from farm.db.models import Render, Shard
from farm.db.states import ShardStatus
from farm.events import Events
from farm.progress import SHARDS_SHOWN
from tests.fixtures.dashboard import (
    SECRET_KEY,
    Studio,
    finish_renders,
    live_server,
    make_character,
    make_tokens,
    story_body,
    studio_settings,
)
from tests.fixtures.services import skip_or_fail
from tests.fixtures.tasks import TaskRecorder

REDIS_URL = "redis://127.0.0.1:6379/0"


def parse(chunks: list[str]) -> list[tuple[str, object]]:
    """The (event, data) pairs in a stream's text; comments and the retry line left out."""
    events = []
    for block in "".join(chunks).split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if line and ":" in line[1:])
        if "event" in lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


def stream_of(studio: Studio, job_id: str) -> JobStream:
    return JobStream(
        studio.farm, job_id, thumb_url=lambda i: f"/thumb/{i}", page_url=lambda i: f"/r/{i}"
    )


@pytest.fixture
def job_id(studio: Studio) -> str:
    return studio.call("POST", "/api/v1/jobs", json=story_body(make_character(studio))).json["id"]


def test_without_redis_the_stream_reads_sql_every_tick(studio: Studio, job_id: str):
    assert not studio.farm.events.enabled
    events = stream_of(studio, job_id).events(poll_s=0.05, heartbeat_s=0.3, max_s=30)

    assert next(events).startswith("retry:")
    (kind, first), (shards_kind, shards) = parse([next(events)])
    assert (kind, first["status"], first["percent"]) == ("progress", "queued", 0)
    assert shards_kind == "shards" and [s["status"] for s in shards] == ["queued", "queued"]
    assert next(events) == ": keepalive\n\n"  # nothing changed for heartbeat_s

    finish_renders(studio, job_id)
    rest = parse(list(events))  # ends by itself once the job has

    kinds = [kind for kind, _ in rest]
    assert kinds.count("render") == 3 and kinds[-1] == "end"
    progress = [data for kind, data in rest if kind == "progress"][-1]
    assert progress["percent"] == 100 and progress["status"] == "succeeded"
    renders = [data for kind, data in rest if kind == "render"]
    assert [(r["scene"], r["variant"]) for r in renders] == [(0, 0), (1, 0), (1, 1)]
    assert renders[0]["caption"] == "Chapter 1" and renders[0]["thumb"].startswith("/thumb/")


def test_a_big_job_streams_its_first_shards_then_only_those_that_change(studio: Studio):
    """A job of 105 shards: the first look sends the page's 100, later looks only a shard
    that changed, however many the job has."""
    scenes = [{"prompt": f"a man img in scene {i}"} for i in range(210)]
    body = story_body(make_character(studio), scenes=scenes)
    job_id = studio.call("POST", "/api/v1/jobs", json=body).json["id"]
    stream = stream_of(studio, job_id)
    first = dict(parse(list(stream.changes())))
    assert len(first["shards"]) == SHARDS_SHOWN

    with studio.farm.sessions.begin() as session:  # a worker takes shard 104
        session.execute(
            update(Shard)
            .where(Shard.job_id == job_id, Shard.index == 104)
            .values(status=ShardStatus.RUNNING, worker_id="w1", attempts=1)
        )
        session.execute(  # progress moves with it: a render of the shard started
            update(Render)
            .where(Render.job_id == job_id, Render.scene_index == 208)
            .values(status="running")
        )
    later = dict(parse(list(stream.changes())))

    assert [(s["index"], s["status"], s["worker_id"]) for s in later["shards"]] == [
        (104, "running", "w1")
    ]


def test_with_redis_an_event_wakes_the_stream_at_once(studio: Studio, job_id: str):
    events = Events(REDIS_URL)
    try:
        events._redis().ping()
    except Exception as error:
        skip_or_fail(f"Redis at {REDIS_URL} is not reachable: {error}")
    studio.farm.__dict__["events"] = events
    # Ticks so slow that only an event can explain a prompt wake-up.
    stream = stream_of(studio, job_id).events(poll_s=60, heartbeat_s=300, max_s=600)
    chunks = [next(stream), next(stream)]  # retry, then the first progress
    done = threading.Event()

    def read_on() -> None:
        chunks.extend(stream)
        done.set()

    threading.Thread(target=read_on, daemon=True).start()
    finish_renders(studio, job_id)
    started = time.monotonic()
    while not done.wait(0.2) and time.monotonic() - started < 15:
        events.publish(job_id, "render.done")  # repeated: the first may beat the subscription

    assert done.is_set(), "the stream did not wake on the Redis event"
    assert time.monotonic() - started < 15
    assert [kind for kind, _ in parse(chunks)][-1] == "end"


def test_the_endpoint_streams_a_finished_job_and_ends(studio: Studio, job_id: str):
    finish_renders(studio, job_id)
    client = studio.client()
    studio.log_in(client, "a-viewer")

    response = client.get(f"/jobs/{job_id}/events")

    assert response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-store"
    kinds = [kind for kind, _ in parse([response.get_data(as_text=True)])]
    assert kinds[0] == "progress" and kinds.count("render") == 3 and kinds[-1] == "end"


def test_a_job_deleted_while_watched_ends_the_stream(studio: Studio, job_id: str):
    from sqlalchemy import delete

    from farm.db.models import Job

    events = stream_of(studio, job_id).events(poll_s=0.05, heartbeat_s=60, max_s=30)
    next(events), next(events)  # the retry line, the first progress
    with studio.farm.sessions.begin() as session:
        session.execute(delete(Job).where(Job.id == job_id))

    assert parse(list(events)) == [("end", {"status": "gone"})]


# Caps: each open stream holds a server thread, so a process serves a bounded number of them.


@pytest.fixture
def capped(tmp_path: Path, migrated_sqlite: Path) -> Iterator[Studio]:
    """A dashboard that serves at most 3 streams, 2 per login, with a quick heartbeat: a
    stream whose browser went away is noticed (and its slot freed) at its next write."""
    shutil.copyfile(migrated_sqlite, tmp_path / "farm.db")
    settings = studio_settings(
        tmp_path, f"sqlite:///{tmp_path / 'farm.db'}", sse_max_streams=3, sse_max_streams_per_user=2
    )
    farm = Farm(settings)
    farm.__dict__["celery"] = TaskRecorder()
    config = {"TESTING": True, "SECRET_KEY": SECRET_KEY, "FARM": farm, "SSE_HEARTBEAT_S": 0.1}
    yield Studio(create_app(config), farm, make_tokens(farm), None)
    farm.close()


def open_stream(base: str, token: str, job_id: str) -> tuple[HTTPConnection, HTTPResponse]:
    """A real stream over HTTP, as a browser's EventSource opens it; its first bytes read."""
    connection = HTTPConnection(base.removeprefix("http://"), timeout=10)
    connection.request(
        "GET",
        f"/jobs/{job_id}/events",
        headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream"},
    )
    response = connection.getresponse()
    if response.status == 200:
        assert response.read(6) == b"retry:"
    return connection, response


def close(stream: tuple[HTTPConnection, HTTPResponse]) -> None:
    connection, response = stream
    response.close()  # the socket stays open while its response's file is
    connection.close()


def test_streams_over_the_per_login_and_process_caps_are_429_and_pages_still_answer(
    capped: Studio,
):
    job_id = capped.call("POST", "/api/v1/jobs", json=story_body(make_character(capped))).json["id"]
    tokens = capped.tokens
    with live_server(capped.app) as base:
        viewer = [open_stream(base, tokens["a-viewer"], job_id) for _ in range(2)]
        third = open_stream(base, tokens["a-viewer"], job_id)
        artist = open_stream(base, tokens["a-artist"], job_id)
        admin = open_stream(base, tokens["a-admin"], job_id)
        page = capped.call("GET", "/api/v1/jobs", "a-viewer")

        assert [response.status for _, response in viewer] == [200, 200]
        assert third[1].status == 429
        assert "this login has 2 live progress streams open" in json.load(third[1])["error"]
        assert artist[1].status == 200
        assert admin[1].status == 429
        assert "the dashboard serves 3 live progress streams" in json.load(admin[1])["error"]
        assert page.status_code == 200

        close(viewer[0])  # a tab closed: its slot is free once the server notices
        deadline = time.monotonic() + 10
        while (again := open_stream(base, tokens["a-admin"], job_id))[1].status == 429:
            close(again)
            assert time.monotonic() < deadline, "a closed stream kept its slot"
            time.sleep(0.1)
        for stream in [*viewer[1:], third, artist, admin, again]:
            close(stream)


def test_streams_that_start_together_share_one_redis_client():
    # Two clients made in a race left one to be garbage collected, and redis-py then closed its
    # sockets under the streams reading them: "Bad file descriptor" when many tabs reconnect.
    events = Events(REDIS_URL)
    start = threading.Barrier(16)
    clients = []

    def first_use() -> None:
        start.wait()
        clients.append(events._redis())

    threads = [threading.Thread(target=first_use) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert len(clients) == 16 and len({id(client) for client in clients}) == 1
