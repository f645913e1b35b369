"""PostgreSQL goes away as a worker ends a shard: the ending is tried again with backoff, and a
short outage costs seconds instead of the shard's whole lease (issue 20).

The database is a PostgreSQL of the test's own (initdb, pg_ctl), stopped right after the
shard's last render is recorded, when only the ending is left to do.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from farm.context import Farm
from farm.db.migrate import upgrade
from farm.db.states import JobStatus, RenderStatus, ShardStatus
from farm.render.loading import LoadedPreset
from tests.farm.conftest import farm_settings, job_rows, make_story, submit
from tests.fixtures.farm_cluster import PostgresServer
from tests.fixtures.tasks import TaskRecorder
from workers.runtime import WorkerRuntime
from workers.shard import run_shard

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAME = "testhost:cpu0"


class StopDatabaseAfterLastRender:
    """The farm's events, stopping PostgreSQL when the last render is announced: the finisher
    has recorded it, and ending the shard is all that is left."""

    def __init__(self, events: Any, server: PostgresServer, renders: int) -> None:
        self.events, self.server, self.left = events, server, renders
        self.stopped = threading.Event()

    def publish(self, job_id: str, kind: str, **fields: Any) -> None:
        self.events.publish(job_id, kind, **fields)
        if kind == "render.done":
            self.left -= 1
            if not self.left:
                self.server.stop()
                self.stopped.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.events, name)


@pytest.fixture
def farm_on(postgres_server: PostgresServer, tmp_path: Path) -> Iterator[Farm]:
    """A farm on the test's own PostgreSQL, with a `TaskRecorder` as its Celery app."""
    upgrade(postgres_server.url)
    farm = Farm(farm_settings(tmp_path, postgres_server.url, end_retry_s=20))
    farm.__dict__["celery"] = TaskRecorder()
    yield farm
    farm.close()


def ended_during_outage(
    farm: Farm, faces: Any, tiny: LoadedPreset, server: PostgresServer, outage_s: float | None
) -> tuple[str, Any]:
    """Run a one-shard job whose database stops after its last render, for `outage_s` (None:
    until the test starts it); the job and the shard's end (its future)."""
    runtime = WorkerRuntime(farm, NAME, "cpu", ["tiny"], {"tiny": tiny})
    runtime.register()
    job_id = submit(farm, faces, make_story(2)).job_id
    _, (shard,), _ = job_rows(farm, job_id)
    stopping = StopDatabaseAfterLastRender(farm.events, server, renders=2)
    farm.__dict__["events"] = stopping
    if outage_s is not None:

        def start_again() -> None:
            assert stopping.stopped.wait(timeout=60)
            time.sleep(outage_s)
            server.start()

        threading.Thread(target=start_again, daemon=True).start()
    return job_id, run_shard(runtime, shard.id)


def test_a_shard_ends_once_the_database_is_back(farm_on, faces, tiny, postgres_server, caplog):
    job_id, ended = ended_during_outage(farm_on, faces, tiny, postgres_server, outage_s=2)

    assert ended.result(timeout=60) == "succeeded"

    job, (shard,), renders = job_rows(farm_on, job_id)
    assert shard.status is ShardStatus.SUCCEEDED and shard.lease_expires is None
    assert {r.status for r in renders} == {RenderStatus.DONE}
    assert job.status is JobStatus.SUCCEEDED
    assert "ending shard" in caplog.text and "the database is out of reach" in caplog.text


def test_an_outage_longer_than_the_retries_leaves_the_shard_to_its_lease(
    farm_on, faces, tiny, postgres_server
):
    farm_on.settings = replace(farm_on.settings, end_retry_s=2)
    job_id, ended = ended_during_outage(farm_on, faces, tiny, postgres_server, outage_s=None)

    started = time.monotonic()
    with pytest.raises(OperationalError):
        ended.result(timeout=60)
    assert time.monotonic() - started < 15  # bounded by end_retry_s, not by the lease

    postgres_server.start()
    _, (shard,), _ = job_rows(farm_on, job_id)
    assert shard.status is ShardStatus.RUNNING and shard.lease_expires is not None  # the reaper's
