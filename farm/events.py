"""Live progress events (render done, shard failed, job finished) over Redis pub/sub.

SQL stays the source of truth; events only tell watchers (the dashboard's SSE stream, `farm
status --follow`) that something changed, so a lost event costs a refresh, never a render.
Publishing never fails a render: an unreachable Redis is logged and skipped.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

ALL_JOBS = "farm:events"


def job_channel(job_id: str) -> str:
    return f"farm:events:{job_id}"


class Events:
    """Publishes to `farm:events:<job>` and `farm:events`; a no-op without a Redis URL."""

    def __init__(self, url: str | None) -> None:
        self.url = url
        self._client: Any = None
        # The dashboard's streams ask for the client from many threads at once; two clients
        # made in a race would leave one to be garbage collected, and redis-py then closes its
        # pool's sockets under the streams still reading them ("Bad file descriptor").
        self._client_lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.url is not None

    def _redis(self) -> Any:
        with self._client_lock:
            if self._client is None:
                import redis

                self._client = redis.Redis.from_url(
                    self.url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=30
                )
            return self._client

    def publish(self, job_id: str, kind: str, **fields: Any) -> None:
        if self.url is None:
            return
        message = json.dumps({"job": job_id, "event": kind, **fields}, default=str)
        try:
            client = self._redis()
            client.publish(job_channel(job_id), message)
            client.publish(ALL_JOBS, message)
        except Exception as error:  # an event is a hint; the render it announces is in SQL
            log.warning("could not publish %s for job %s: %s", kind, job_id, error)

    def listen(self, job_id: str | None = None, timeout_s: float = 15.0) -> Iterator[dict | None]:
        """Yield events as they come, and None every `timeout_s` of silence (a heartbeat)."""
        if self.url is None:
            raise RuntimeError("live events need Redis: set FARM_EVENTS_URL or a redis broker")
        pubsub = self._redis().pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(job_channel(job_id) if job_id else ALL_JOBS)
        try:
            while True:
                message = pubsub.get_message(timeout=timeout_s)
                yield json.loads(message["data"]) if message else None
        finally:
            pubsub.close()
