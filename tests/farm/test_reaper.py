"""The reaper: shards whose worker stopped renewing the lease are requeued or failed, and workers
that stopped beating are marked lost; with `dry_run` it only reports."""

from __future__ import annotations

from datetime import timedelta

import pytest
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import select, update

from farm.context import Farm
from farm.db.models import Job, Shard, Worker
from farm.db.states import JobStatus, RenderStatus, ShardStatus, WorkerStatus
from farm.db.types import utcnow
from farm.queue.app import FINALIZE_JOB, RENDER_SHARD
from tests.farm.conftest import job_rows, make_story, submit
from tests.fixtures.tasks import SentTask
from workers.reaper import reap

DEAD = "gone:cuda0"
LIVE = "here:cuda0"


def start(farm: Farm, shard_id: int, worker: str, *, starts: int = 1, ago_s: float = 0) -> None:
    """`starts` claims of the shard by `worker`, the last `ago_s` seconds ago."""
    with farm.sessions.begin() as session:
        shard = session.get(Shard, shard_id)
        for _ in range(starts):
            shard.start(worker, farm.settings.lease_s, now=utcnow() - timedelta(seconds=ago_s))
        session.get(Job, shard.job_id).start()


def add_worker(farm: Farm, name: str, status: WorkerStatus, silent_s: float) -> None:
    with farm.sessions.begin() as session:
        session.add(
            Worker(
                id=name,
                hostname=name.split(":")[0],
                device="cuda:0",
                presets=["tiny"],
                status=status,
                last_heartbeat=utcnow() - timedelta(seconds=silent_s),
            )
        )


def test_an_expired_lease_is_requeued_and_sent_again(farm, faces):
    job_id = submit(farm, faces, make_story(3), priority=6).job_id
    _, (dead, live), _ = job_rows(farm, job_id)
    start(farm, dead.id, DEAD, ago_s=120)  # a 60 s lease, over a minute ago
    start(farm, live.id, LIVE)
    farm.celery.sent.clear()

    reaped = reap(farm)

    assert (reaped.requeued, reaped.failed) == ([dead.id], [])
    job, (dead, live), _ = job_rows(farm, job_id)
    assert dead.status is ShardStatus.QUEUED and dead.worker_id is None
    assert dead.lease_expires is None and dead.error.startswith(f"lease expired on {DEAD}")
    assert dead.attempts == 1  # the next claim counts the next attempt
    assert live.status is ShardStatus.RUNNING and live.worker_id == LIVE
    assert job.status is JobStatus.RUNNING
    assert farm.celery.sent == [SentTask(RENDER_SHARD, [dead.id], "render.tiny", 3)]


def test_an_expired_lease_without_attempts_left_fails_and_ends_the_job(farm, faces):
    job_id = submit(farm, faces, make_story(2)).job_id
    _, (shard,), _ = job_rows(farm, job_id)
    start(farm, shard.id, DEAD, starts=2, ago_s=120)
    farm.celery.sent.clear()

    reaped = reap(farm)

    assert (reaped.requeued, reaped.failed) == ([], [shard.id])
    job, (shard,), renders = job_rows(farm, job_id)
    assert shard.status is ShardStatus.FAILED and shard.finished is not None
    assert shard.error.endswith("(attempt 2 of 2)")
    # Its renders are failed with it: a failed job shows no render still waiting.
    assert [(r.status, r.error) for r in renders] == [(RenderStatus.FAILED, shard.error)] * 2
    assert job.status is JobStatus.FAILED and job.finished is not None
    # Nothing is rendered again; only the job's finalize step (comic, exports, webhook) is sent.
    assert [(t.name, t.args) for t in farm.celery.sent] == [(FINALIZE_JOB, [job_id])]


def snapshot(farm: Farm) -> list[tuple]:
    with farm.sessions() as session:
        shards = session.execute(select(Shard.id, Shard.status, Shard.version, Shard.error))
        workers = session.execute(select(Worker.id, Worker.status, Worker.updated))
        return [*shards.all(), *workers.all()]


def test_dry_run_reports_and_changes_nothing(farm, faces):
    job_id = submit(farm, faces, make_story(3)).job_id
    _, (requeue, fail), _ = job_rows(farm, job_id)
    start(farm, requeue.id, DEAD, ago_s=120)
    start(farm, fail.id, DEAD, starts=2, ago_s=120)
    add_worker(farm, DEAD, WorkerStatus.BUSY, silent_s=120)
    before = snapshot(farm)
    farm.celery.sent.clear()

    reaped = reap(farm, dry_run=True)

    assert (reaped.requeued, reaped.failed, reaped.lost_workers) == (
        [requeue.id],
        [fail.id],
        [DEAD],
    )
    assert snapshot(farm) == before
    assert farm.celery.sent == []


@pytest.mark.parametrize("status", [WorkerStatus.IDLE, WorkerStatus.BUSY, WorkerStatus.DRAINING])
def test_a_worker_silent_for_a_lease_is_lost(farm, status):
    add_worker(farm, DEAD, status, silent_s=61)
    add_worker(farm, LIVE, status, silent_s=5)

    assert reap(farm).lost_workers == [DEAD]

    with farm.sessions() as session:
        statuses = dict(session.execute(select(Worker.id, Worker.status)).all())
    assert statuses == {DEAD: WorkerStatus.LOST, LIVE: status}


def refuse_sends(task: SentTask) -> None:
    raise BrokerError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


def test_shards_never_sent_are_sent_by_the_reaper_and_a_dry_run_only_reports_them(farm, faces):
    farm.celery.on_send = refuse_sends  # the broker is down at the submission
    job_id = submit(farm, faces, make_story(3), priority=6).job_id
    farm.celery.on_send = None
    _, shards, _ = job_rows(farm, job_id)
    assert [s.sent for s in shards] == [None, None] and farm.celery.sent == []
    with farm.sessions.begin() as session:  # their sender had a whole reaper interval
        session.execute(
            update(Shard)
            .where(Shard.job_id == job_id)
            .values(updated=utcnow() - timedelta(seconds=farm.settings.reap_interval_s + 1))
        )

    assert reap(farm, dry_run=True).unsent == [s.id for s in shards]
    assert farm.celery.sent == [] and all(s.sent is None for s in job_rows(farm, job_id)[1])

    assert reap(farm).unsent == [s.id for s in shards]
    assert farm.celery.sent == [SentTask(RENDER_SHARD, [s.id], "render.tiny", 3) for s in shards]
    assert all(s.sent is not None for s in job_rows(farm, job_id)[1])
