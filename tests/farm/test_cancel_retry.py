"""Cancelling and retrying jobs, with workers simulated through the models' own transitions.

Cancel must never pull a shard from under a worker that is rendering it: the job waits, flagged,
until that shard ends. Retry must reopen only what did not succeed, so that finished images are
neither rendered again nor lost.
"""

from __future__ import annotations

import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session

from farm.context import Farm
from farm.db.models import Job, Render, Shard
from farm.db.states import JobStatus, RenderStatus, ShardStatus
from farm.errors import InputError
from farm.jobs import render_key
from farm.lifecycle import cancel_job, finish_job_if_done, retry_job
from farm.queue.app import RENDER_SHARD
from tests.farm.conftest import job_rows, make_story, submit
from tests.fixtures.tasks import SentTask

WORKER = "gpu-box:cuda0"


def start_shard(farm: Farm, shard_id: int) -> None:
    """What a worker's claim does: the shard runs under a lease, the job runs."""
    with farm.sessions.begin() as session:
        shard = session.get(Shard, shard_id)
        shard.start(WORKER, farm.settings.lease_s)
        session.get(Job, shard.job_id).start()


def test_cancel_a_queued_job_ends_it_at_once(farm, faces):
    submitted = submit(farm, faces, make_story(3))

    returned = cancel_job(farm, submitted.job_id)

    job, shards, renders = job_rows(farm, submitted.job_id)
    assert returned.status is job.status is JobStatus.CANCELLED
    assert job.cancel_requested and job.finished is not None
    assert all(s.status is ShardStatus.CANCELLED and s.finished for s in shards)
    assert all(r.status is RenderStatus.CANCELLED for r in renders)


def test_cancel_waits_for_the_running_shard(farm, faces):
    submitted = submit(farm, faces, make_story(3))
    _, (running, _), _ = job_rows(farm, submitted.job_id)
    start_shard(farm, running.id)

    assert cancel_job(farm, submitted.job_id).status is JobStatus.RUNNING

    job, shards, renders = job_rows(farm, submitted.job_id)
    assert job.status is JobStatus.RUNNING and job.cancel_requested and job.finished is None
    assert [s.status for s in shards] == [ShardStatus.RUNNING, ShardStatus.CANCELLED]
    assert [r.status for r in renders] == [RenderStatus.QUEUED] * 2 + [RenderStatus.CANCELLED]

    # The worker sees the flag at its next render and ends its shard: now the job ends.
    with farm.sessions.begin() as session:
        session.get(Shard, running.id).cancel()
        assert finish_job_if_done(session, submitted.job_id) is JobStatus.CANCELLED
    job, _, _ = job_rows(farm, submitted.job_id)
    assert job.status is JobStatus.CANCELLED and job.finished is not None


@pytest.mark.parametrize("job_id", ["known", "nope"])
def test_cancel_refuses_an_ended_or_unknown_job(farm, faces, job_id):
    if job_id == "known":
        job_id = submit(farm, faces, make_story(1)).job_id
        cancel_job(farm, job_id)
        message = (
            f"job {job_id} is cancelled; only queued, running, paused or awaiting approval jobs "
            "cancel"
        )
    else:
        message = "no job 'nope'"
    with pytest.raises(InputError) as refused:
        cancel_job(farm, job_id)
    assert str(refused.value) == message


def end_job_in_every_way(farm: Farm, job_id: str) -> None:
    """Shard 0 succeeds, shard 1 fails with one image done, shard 2 is cancelled; job failed."""
    _, shards, renders = job_rows(farm, job_id)
    with farm.sessions.begin() as session:
        for shard in shards:
            session.get(Shard, shard.id).start(WORKER, 60)
        session.get(Job, job_id).start()
        for render in renders[:3]:
            row = session.get(Render, render.id)
            row.start(WORKER, "cuda:0")
            row.finish(render_key(job_id, row.scene_index, row.variant))
        row = session.get(Render, renders[3].id)
        row.start(WORKER, "cuda:0")
        row.fail("CUDA error: an illegal memory access was encountered")
        session.get(Shard, shards[0].id).succeed()
        session.get(Shard, shards[1].id).fail("some scenes could not be rendered")
        session.get(Shard, shards[2].id).cancel()
        session.get(Render, renders[4].id).cancel()
        assert finish_job_if_done(session, job_id) is JobStatus.FAILED


def test_retry_reopens_only_what_did_not_succeed(farm, faces):
    submitted = submit(farm, faces, make_story(5), priority=7)
    end_job_in_every_way(farm, submitted.job_id)
    _, before, renders_before = job_rows(farm, submitted.job_id)
    farm.celery.sent.clear()

    assert retry_job(farm, submitted.job_id) == 2

    job, shards, renders = job_rows(farm, submitted.job_id)
    assert job.status is JobStatus.RUNNING and job.error is None and job.finished is None
    assert [s.status for s in shards] == [
        ShardStatus.SUCCEEDED,
        ShardStatus.QUEUED,
        ShardStatus.QUEUED,
    ]
    assert [s.attempts for s in shards] == [1, 0, 0]  # a fresh set of attempts
    assert shards[0].finished == before[0].finished
    assert [r.status for r in renders] == [RenderStatus.DONE] * 3 + [RenderStatus.QUEUED] * 2
    assert all(r.storage_key for r in renders[:3])
    assert [(r.storage_key, r.finished) for r in renders[:3]] == [
        (r.storage_key, r.finished) for r in renders_before[:3]
    ]
    assert renders[3].error is None
    assert farm.celery.sent == [
        SentTask(RENDER_SHARD, [s.id], "render.tiny", 2) for s in shards[1:]
    ]


def test_retry_refuses_an_open_job_or_one_without_failures(farm, faces):
    submitted = submit(farm, faces, make_story(1))
    _, (shard,), (render,) = job_rows(farm, submitted.job_id)
    start_shard(farm, shard.id)
    with pytest.raises(InputError, match="is still running; retry it once it has ended"):
        retry_job(farm, submitted.job_id)

    with farm.sessions.begin() as session:
        row = session.get(Render, render.id)
        row.start(WORKER, "cuda:0")
        row.finish("key.png")
        session.get(Shard, shard.id).succeed()
        finish_job_if_done(session, submitted.job_id)
    with pytest.raises(InputError, match="has no failed or cancelled shards to retry"):
        retry_job(farm, submitted.job_id)


def test_a_cancel_that_loses_a_race_with_a_worker_reads_again_and_wins(farm, faces):
    """The worker starts the job between the cancel's read and its write: the cancel's write
    finds another version of the row, and the whole cancel runs again on a fresh read."""
    job_id = submit(farm, faces, make_story(4)).job_id
    raced = []

    def worker_starts_the_job(session, *_):
        if raced:
            return
        raced.append(True)
        with farm.sessions.begin() as other:
            other.get(Shard, job_rows(farm, job_id)[1][0].id).start("w:cpu0", 60)
            other.get(Job, job_id).start()

    event.listen(Session, "before_flush", worker_starts_the_job)
    try:
        job = cancel_job(farm, job_id)
    finally:
        event.remove(Session, "before_flush", worker_starts_the_job)

    assert raced == [True]
    assert job.status is JobStatus.RUNNING and job.cancel_requested  # the running shard ends it
    _, shards, _ = job_rows(farm, job_id)
    assert [s.status for s in shards] == [ShardStatus.RUNNING, ShardStatus.CANCELLED]
