"""Live progress of a job as server-sent events, for the job page's `EventSource`.

SQL is the truth and events are hints: on every wake-up (a Redis event for the job, or a tick)
the stream reads the job's progress from SQL and sends what changed. With Redis events
configured it wakes on the workers' events; without them it reads SQL every `SSE_POLL_S`.
Either way a lost event costs at most a moment, and a comment line goes out while nothing
happens so proxies keep the connection open. The stream ends with an `end` event when the job
does, or after `SSE_MAX_S`, when the browser reconnects on its own.

Events: `progress` (status, counts, timings), `render` (one finished render, with its
thumbnail), `shards` (shards whose state changed), `end`.

Each open stream holds one of the process's threads for as long as it is open, so a process
serves at most `sse_max_streams` of them, and one login at most `sse_max_streams_per_user`
(settings); gunicorn_conf gives each process that many threads and more for the pages, which
therefore always find one free. A stream over a cap is answered 429 at once.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from flask import Blueprint, Response, abort, current_app, stream_with_context, url_for
from flask.blueprints import BlueprintSetupState
from sqlalchemy import select
from sqlalchemy.orm import Session

from dashboard.context import farm
from dashboard.progress import job_summary
from dashboard.scope import job_of
from dashboard.security import principal
from farm.context import Farm
from farm.db.models import Render, Shard
from farm.db.states import JobStatus, RenderStatus
from farm.db.types import sql_now
from farm.progress import shard_row, shard_rows

live = Blueprint("live", __name__)

GONE = "gone"  # the job was deleted while watched
# A job awaiting approval has nothing more to stream until scenes are approved: the page
# reloads, showing its contact sheet, as it does for a job that ended.
ENDED = {
    str(JobStatus.SUCCEEDED),
    str(JobStatus.FAILED),
    str(JobStatus.CANCELLED),
    str(JobStatus.AWAITING_APPROVAL),
    GONE,
}
MAX_RENDERS_AT_ONCE = 500  # a reconnect to a huge job sends the newest thumbnails only
# A shard's `updated` is stamped before its transaction commits: each look goes back this far
# past the last one, so a slow commit is still seen (what was sent unchanged is not resent).
SHARD_LOOKBACK = timedelta(seconds=10)


def sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


class StreamSlots:
    """The streams this process serves now, in all and per login, counted under a lock:
    streams open and close on many threads at once."""

    def __init__(self, total: int, per_user: int) -> None:
        self.total, self.per_user = total, per_user
        self._lock = threading.Lock()
        self._open: Counter[str] = Counter()

    def take(self, user: str) -> Callable[[], None]:
        """A slot for `user`, or a 429; returns its release, which may be called again."""
        with self._lock:
            if self._open[user] >= self.per_user:
                abort(
                    429,
                    f"this login has {self.per_user} live progress streams open, the most it "
                    "may; close some job pages (or their tabs) and reload this one",
                )
            if self._open.total() >= self.total:
                abort(
                    429,
                    f"the dashboard serves {self.total} live progress streams, the most it may; "
                    "reload the page in a minute",
                )
            self._open[user] += 1
        released = threading.Event()

        def release() -> None:
            with self._lock:
                if not released.is_set():
                    released.set()
                    self._open[user] -= 1
                    if not self._open[user]:
                        del self._open[user]

        return release


@live.record_once
def _make_slots(state: BlueprintSetupState) -> None:
    settings = state.app.extensions["farm"].settings
    state.app.extensions["streams"] = StreamSlots(
        settings.sse_max_streams, settings.sse_max_streams_per_user
    )


class _HeldStream:
    """A stream's events with its slot: the slot is released when the server closes the
    response (the stream ended, or the browser went away), even if it never started."""

    def __init__(self, events: Iterator[str], release: Callable[[], None]) -> None:
        self._events, self._release = events, release

    def __iter__(self) -> Iterator[str]:
        return self._events

    def close(self) -> None:
        try:
            close = getattr(self._events, "close", None)
            if close is not None:
                close()
        finally:
            self._release()


@live.get("/jobs/<uuid:job_id>/events")
def job_events(job_id: Any) -> Response:
    with farm().sessions() as session:
        job = job_of(session, principal(), str(job_id))
    config = current_app.config
    stream = JobStream(
        farm(),
        job.id,
        thumb_url=lambda render_id: url_for("files.thumb", render_id=render_id),
        page_url=lambda render_id: url_for("gallery.render", render_id=render_id),
    )
    events = stream.events(
        poll_s=config["SSE_POLL_S"],
        heartbeat_s=config["SSE_HEARTBEAT_S"],
        max_s=config["SSE_MAX_S"],
    )
    who = principal()
    release = current_app.extensions["streams"].take(f"{who.kind}:{who.id}")
    return Response(
        _HeldStream(stream_with_context(events), release),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@dataclass
class JobStream:
    """What one watcher has been sent so far, so that each wake-up sends only what changed."""

    farm: Farm
    job_id: str
    thumb_url: Callable[[int], str]  # a render id to its thumbnail's URL
    page_url: Callable[[int], str]  # ... and to its page
    _progress: dict[str, Any] | None = None
    _shards: dict[int, dict[str, Any]] = field(default_factory=dict)
    _opened: datetime | None = None  # the first look, on the database's clock
    _looked: datetime | None = None  # the last one
    _renders_since: datetime | None = None
    _renders_sent: set[int] = field(default_factory=set)

    def events(self, *, poll_s: float, heartbeat_s: float, max_s: float) -> Iterator[str]:
        yield "retry: 3000\n\n"  # how long the browser waits before it reconnects
        started = last_sent = time.monotonic()
        if self.farm.events.enabled:
            # Silence also wakes the stream now and then: SQL is read again, which covers an
            # event published before the subscription began.
            wakeups: Iterator[Any] = self.farm.events.listen(self.job_id, timeout_s=poll_s * 5)
        else:
            wakeups = _ticks(poll_s)
        with closing(wakeups):  # unsubscribes from Redis when the browser goes away
            while True:
                chunk = "".join(self.changes())
                if chunk:
                    yield chunk
                    last_sent = time.monotonic()
                if self._progress is not None and self._progress["status"] in ENDED:
                    yield sse("end", {"status": self._progress["status"]})
                    return
                now = time.monotonic()
                if now - started > max_s:
                    return
                if now - last_sent >= heartbeat_s:
                    yield ": keepalive\n\n"
                    last_sent = now
                next(wakeups)

    def changes(self) -> Iterator[str]:
        with self.farm.sessions() as session:
            progress = job_summary(session, self.job_id)
            if progress is None:
                self._progress = {"status": GONE}
                return
            if progress != self._progress:
                self._progress = progress
                yield sse("progress", progress)
                changed = list(self._changed_shards(session))
                if changed:
                    yield sse("shards", changed)
                yield from self._new_renders(session)

    def _changed_shards(self, session: Session) -> Iterator[dict[str, Any]]:
        """The page's first window of shards at first; then those written since that differ
        from what was sent, and of the shards never sent, those that changed after the
        first look: never the whole of a job of thousands of shards."""
        now = session.scalar(select(sql_now()))
        if self._opened is None:
            self._opened = now
            rows = shard_rows(session, self.job_id)
        else:
            shards = session.scalars(
                select(Shard)
                .where(Shard.job_id == self.job_id, Shard.updated >= self._looked - SHARD_LOOKBACK)
                .order_by(Shard.index)
            )
            rows = [
                shard_row(shard)
                for shard in shards
                if shard.index in self._shards or shard.updated >= self._opened
            ]
        self._looked = now
        for row in rows:
            if self._shards.get(row["index"]) != row:
                self._shards[row["index"]] = row
                yield row

    def _new_renders(self, session: Session) -> Iterator[str]:
        query = (
            select(Render.id, Render.scene_index, Render.variant, Render.caption, Render.updated)
            .where(Render.job_id == self.job_id, Render.status == RenderStatus.DONE)
            .order_by(Render.updated.desc(), Render.scene_index.desc(), Render.variant.desc())
            .limit(MAX_RENDERS_AT_ONCE)
        )
        if self._renders_since is not None:  # on the database's clock, like `updated` itself
            query = query.where(Render.updated >= self._renders_since)
        rows = session.execute(query).all()
        for render_id, scene, variant, caption, updated in reversed(rows):
            if self._renders_since is None or updated > self._renders_since:
                self._renders_since = updated
            if render_id in self._renders_sent:
                continue
            self._renders_sent.add(render_id)
            yield sse(
                "render",
                {
                    "id": render_id,
                    "scene": scene,
                    "variant": variant,
                    "caption": caption,
                    "thumb": self.thumb_url(render_id),
                    "page": self.page_url(render_id),
                },
            )


def _ticks(every_s: float) -> Iterator[None]:
    while True:
        time.sleep(every_s)
        yield None
