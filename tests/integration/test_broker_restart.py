"""Redis, the broker, restarted under a running job: the job still completes, nothing twice.

The broker is a redis-server of this module's own, so that restarting it disturbs no one else.
With its append-only file (as deploy/docker-compose.yml runs it) the queued tasks survive the
restart; without, they are lost with it, and the reaper's pass over queued shards whose task
the broker no longer holds sends them again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.context import Farm
from tests.fixtures.farm_cluster import (
    FarmCluster,
    RedisServer,
    WorkerGroup,
    assert_every_render_done_once,
    job_rows,
    make_story,
    wait_for_job,
    wait_for_running_render,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(Path(tmp_path_factory.mktemp("redis")))
    server.start(persistent=True)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def workers(farm_cluster: FarmCluster, broker: RedisServer) -> Iterator[WorkerGroup]:
    """One worker (with beat): the restart is what is tested, not the sharing of work."""
    group = farm_cluster.start_workers(1, FARM_BROKER_URL=broker.url)
    yield group
    group.stop()


@pytest.fixture(scope="module")
def farm(farm_cluster: FarmCluster, broker: RedisServer) -> Farm:
    return farm_cluster.farm(FARM_BROKER_URL=broker.url)


@pytest.fixture(autouse=True)
def no_troubles(workers: WorkerGroup) -> Iterator[None]:
    since = len(workers.log())
    yield
    assert workers.troubles(since) == [], workers.report()


@pytest.mark.parametrize("persistent", [True, False], ids=["append-only", "in-memory"])
def test_a_job_survives_a_restart_of_redis(
    farm_cluster: FarmCluster,
    broker: RedisServer,
    workers: WorkerGroup,
    farm: Farm,
    persistent: bool,
) -> None:
    story, photos = make_story("newton_man", 8)
    job_id = farm_cluster.submit(farm, story, photos).job_id
    # One shard renders, three wait in Redis, when it goes away.
    wait_for_running_render(farm, job_id, workers.names()[0])
    broker.stop()
    time.sleep(1)
    broker.start(persistent=persistent)

    wait_for_job(farm, job_id, [workers])
    assert_every_render_done_once(farm, farm_cluster.bucket(), job_id, 8)
    if not persistent:
        _, shards, _ = job_rows(farm, job_id)
        assert workers.reaped("resent lost tasks of") & {s.id for s in shards}, workers.report()
