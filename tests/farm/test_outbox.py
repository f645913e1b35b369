"""The shards table as the outbox: a broker that is down when a job is submitted delays the
job, never loses it. The broker is a redis-server of the test's own, down at the submission
and started after; the reaper's pass then sends what was never sent, once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from farm.context import Farm
from farm.queue.app import RENDER_SHARD, make_celery, render_queue
from tests.farm.conftest import job_rows, make_story, submit
from tests.fixtures.farm_cluster import RedisServer
from workers.reaper import reap


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of the test's own, not started: the broker is down until the test starts it."""
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
def farm_on(farm: Farm, broker: RedisServer) -> Iterator[Farm]:
    """The farm, with its own Celery app on `broker`, and a reaper pass of one second: a shard
    its sender had a whole pass to send, and did not, is the reaper's."""
    settings = replace(farm.settings, broker_url=broker.url, reap_interval_s=1)
    on_broker = Farm(settings)
    yield on_broker
    on_broker.close()


def queued_shards(farm: Farm) -> list[tuple[str, list[int]]]:
    """(task, arguments) of every message in the tiny preset's render queue, taken out of it."""
    (render,) = make_celery(farm.settings, ["tiny"]).conf.task_queues[1:]
    assert render.name == render_queue("tiny")
    messages = []
    with farm.celery.connection_for_read() as connection:
        queue = connection.SimpleQueue(render)
        while True:
            try:
                message = queue.get_nowait()
            except queue.Empty:
                break
            message.ack()
            messages.append((message.headers["task"], message.payload[0]))
        queue.close()
    return messages


def test_a_job_submitted_while_the_broker_is_down_is_sent_once_it_is_back(farm_on, faces, broker):
    started = time.monotonic()
    submitted = submit(farm_on, faces, make_story(3))  # the broker is down: no error
    submit_s = time.monotonic() - started

    _, shards, _ = job_rows(farm_on, submitted.job_id)
    assert [s.sent for s in shards] == [None, None]  # committed, and waiting to be sent

    broker.start(persistent=False)
    time.sleep(1.1)  # one reaper interval: the submission had its chance to send
    reaped = reap(farm_on)

    assert reaped.unsent == [s.id for s in shards]
    _, shards, _ = job_rows(farm_on, submitted.job_id)
    assert all(s.sent is not None for s in shards)
    assert sorted(queued_shards(farm_on)) == [(RENDER_SHARD, [s.id]) for s in shards]

    time.sleep(1.1)
    assert reap(farm_on).unsent == []  # sent once: the next pass sends nothing again
    assert queued_shards(farm_on) == []
    assert submit_s < 30, f"the submission waited {submit_s:.1f} s on the broker"


def test_a_shard_is_not_sent_again_before_its_sender_had_its_chance(farm_on, faces, broker):
    """A pass right after the commit could race the submission's own send: it waits."""
    submitted = submit(farm_on, faces, make_story(1))
    broker.start(persistent=False)

    assert reap(farm_on).unsent == []

    _, (shard,), _ = job_rows(farm_on, submitted.job_id)
    assert shard.sent is None
    assert queued_shards(farm_on) == []
