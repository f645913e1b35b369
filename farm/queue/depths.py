"""How many tasks wait in each queue, and at which priority: read from the broker itself.

Each broker keeps its waiting messages differently, so each is counted its own way:

- Redis (the cluster's broker): kombu emulates priorities with one list per priority step, the
  queue's own name for step 0 and `<queue>:<step>` for the others (`farm.queue.app` sets the
  steps 0-9 and the separator). Their lengths give the depth per priority, for every queue in
  one round trip.
  The farm sends its priority 9 as Celery's 0, so step `s` holds the farm's priority `9 - s`.
- The embedded SQL broker and the others: the count that a passive `queue_declare` reports
  (on the SQL broker, the rows of its message table). The SQL broker serves in the order sent
  and keeps no priority, so there is no breakdown to give.
- A broker that cannot be reached within a few seconds: every depth is unknown (None), never
  zero, because "nothing waits" would be a lie that the reaper acts on.

Messages a worker has taken but not yet acknowledged (the shard it renders) are not waiting and
are not counted; SQL's running shards say that.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery

from farm.queue.app import MAX_PRIORITY

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class QueueDepth:
    messages: int | None  # None: the broker could not be read
    # The farm's priority (9 is served first) -> messages; None where the broker keeps none.
    by_priority: Mapping[int, int] | None = None


def queue_depths(
    celery: Celery, queues: Sequence[str], *, timeout_s: float = CONNECT_TIMEOUT_S
) -> dict[str, QueueDepth]:
    """The depth of each of `queues`; a queue never declared counts as empty."""
    try:
        with celery.connection_for_read() as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout_s)
            channel = connection.default_channel
            if connection.transport.driver_type == "redis":
                return _redis_depths(channel, queues)
            return {queue: _declared_depth(connection, channel, queue) for queue in queues}
    except Exception as error:  # a down broker is an unknown depth, never an error page
        log.warning("cannot read queue depths from the broker: %s", error)
        return {queue: QueueDepth(None) for queue in queues}


def _redis_depths(channel: Any, queues: Sequence[str]) -> dict[str, QueueDepth]:
    steps = list(channel.priority_steps)
    with channel.client.pipeline() as pipe:
        for queue in queues:
            for step in steps:
                pipe.llen(f"{queue}{channel.sep}{step}" if step else queue)
        sizes = [int(size) for size in pipe.execute()]
    depths = {}
    for index, queue in enumerate(queues):
        of_queue = sizes[index * len(steps) : (index + 1) * len(steps)]
        by_priority = {MAX_PRIORITY - step: n for step, n in zip(steps, of_queue, strict=True)}
        depths[queue] = QueueDepth(sum(of_queue), dict(sorted(by_priority.items(), reverse=True)))
    return depths


def _declared_depth(connection: Any, channel: Any, queue: str) -> QueueDepth:
    try:
        return QueueDepth(channel.queue_declare(queue=queue, passive=True).message_count)
    except connection.channel_errors:  # never declared: nothing was ever sent to it
        return QueueDepth(0)
