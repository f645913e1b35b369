"""Live progress over server-sent events: woken by Redis events when they are configured, by
reading SQL every tick when they are not; a heartbeat comment while nothing happens."""

from __future__ import annotations

import json
import threading
import time

import pytest

from dashboard.live import JobStream
from farm.events import Events
from tests.fixtures.dashboard import Studio, finish_renders, make_character, story_body
from tests.fixtures.services import skip_or_fail

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
