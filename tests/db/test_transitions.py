"""Rows change state only through the models' methods, which set the timestamps with it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from farm.db.models import Job, Render, Shard, Worker
from farm.db.states import JobStatus, RenderStatus, ShardStatus, TransitionError, WorkerStatus
from tests.db.rows import add_job

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

Row = TypeVar("Row")


def _reread(engine: Engine, model: type[Row], key: object) -> Row:
    """The row as another process would see it: from the database, not from a session."""
    with Session(engine) as fresh:
        return fresh.get_one(model, key)


def _first_shard(session: Session, job: Job) -> Shard:
    return session.scalars(select(Shard).where(Shard.job_id == job.id).limit(1)).one()


def test_a_started_shard_holds_a_lease_and_counts_the_attempt(
    db_engine: Engine, db_session: Session
) -> None:
    shard = _first_shard(db_session, add_job(db_session))

    shard.start("host:cuda0", lease_s=90, task_id="task-1", now=T0)
    db_session.commit()

    read = _reread(db_engine, Shard, shard.id)
    assert read.status is ShardStatus.RUNNING
    assert (read.attempts, read.worker_id, read.task_id) == (1, "host:cuda0", "task-1")
    assert read.started == T0
    assert read.lease_expires == T0 + timedelta(seconds=90)
    assert read.finished is None


def test_renewing_extends_the_lease(db_session: Session) -> None:
    shard = _first_shard(db_session, add_job(db_session))
    shard.start("host:cuda0", lease_s=90, now=T0)

    shard.renew(90, now=T0 + timedelta(seconds=60))

    assert shard.lease_expires == T0 + timedelta(seconds=150)


def test_a_finished_shard_has_no_lease(db_engine: Engine, db_session: Session) -> None:
    shard = _first_shard(db_session, add_job(db_session))
    shard.start("host:cuda0", lease_s=90, now=T0)

    shard.succeed(now=T0 + timedelta(seconds=30))
    db_session.commit()

    read = _reread(db_engine, Shard, shard.id)
    assert read.status is ShardStatus.SUCCEEDED
    assert read.finished == T0 + timedelta(seconds=30)
    assert read.lease_expires is None


def test_a_shard_is_requeued_until_its_attempts_run_out(
    db_engine: Engine, db_session: Session
) -> None:
    shard = _first_shard(db_session, add_job(db_session))
    db_session.flush()

    for attempt in range(1, shard.max_attempts):
        shard.start(f"host:cuda{attempt}", lease_s=90, now=T0)
        assert shard.requeue("lease expired", now=T0) is ShardStatus.QUEUED
        assert (shard.worker_id, shard.lease_expires, shard.error) == (None, None, "lease expired")

    shard.start("host:cuda9", lease_s=90, now=T0)
    assert shard.requeue("lease expired", now=T0 + timedelta(minutes=2)) is ShardStatus.FAILED
    db_session.commit()

    read = _reread(db_engine, Shard, shard.id)
    assert read.status is ShardStatus.FAILED
    assert read.error == "lease expired (attempt 3 of 3)"
    assert read.finished == T0 + timedelta(minutes=2)
    with pytest.raises(TransitionError, match="used all 3 attempts"):
        read.start("host:cuda0", lease_s=90)


def test_a_redelivered_task_may_take_over_a_running_shard(db_session: Session) -> None:
    shard = _first_shard(db_session, add_job(db_session))
    shard.start("host:cuda0", lease_s=90, now=T0)

    shard.start("host:cuda1", lease_s=90, now=T0 + timedelta(minutes=5))

    assert (shard.attempts, shard.worker_id) == (2, "host:cuda1")


def test_a_render_finishes_with_its_timings(db_engine: Engine, db_session: Session) -> None:
    job = add_job(db_session)
    render = db_session.scalars(select(Render).where(Render.job_id == job.id).limit(1)).one()

    render.start("host:cuda0", "NVIDIA H100", now=T0)
    render.finish(
        "jobs/x/renders/0-v0.png",
        "jobs/x/thumbs/0-v0.jpg",
        identity_s=0.5,
        denoise_s=7.25,
        decode_s=0.75,
        upload_s=0.1,
        face_similarity=0.71,
        now=T0 + timedelta(seconds=9),
    )
    db_session.commit()

    read = _reread(db_engine, Render, render.id)
    assert read.status is RenderStatus.DONE
    assert (read.started, read.finished) == (T0, T0 + timedelta(seconds=9))
    assert (read.identity_s, read.denoise_s, read.decode_s, read.upload_s) == (
        0.5,
        7.25,
        0.75,
        0.1,
    )
    assert (read.worker_id, read.device, read.attempts) == ("host:cuda0", "NVIDIA H100", 1)
    assert read.storage_key == "jobs/x/renders/0-v0.png"


def test_a_failed_render_is_retried_and_its_error_cleared(db_session: Session) -> None:
    job = add_job(db_session)
    render = db_session.scalars(select(Render).where(Render.job_id == job.id).limit(1)).one()
    render.start("host:cuda0", "cuda:0", now=T0)
    render.fail("CUDA out of memory", now=T0)

    render.start("host:cuda1", "cuda:0", now=T0)

    assert (render.status, render.error, render.attempts) == (RenderStatus.RUNNING, None, 2)


def test_a_job_starts_once_and_keeps_its_first_start(db_session: Session) -> None:
    job = add_job(db_session)
    db_session.flush()

    job.start(now=T0)
    job.start(now=T0 + timedelta(minutes=1))
    job.succeed(now=T0 + timedelta(minutes=2))

    assert job.status is JobStatus.SUCCEEDED
    assert (job.started, job.finished) == (T0, T0 + timedelta(minutes=2))


def test_a_cancelled_job_keeps_the_request_and_cannot_be_cancelled_again(
    db_session: Session,
) -> None:
    job = add_job(db_session)
    db_session.flush()

    job.request_cancel()
    job.cancel(now=T0)

    assert (job.status, job.cancel_requested, job.finished) == (JobStatus.CANCELLED, True, T0)
    with pytest.raises(TransitionError, match="nothing to cancel"):
        job.request_cancel()


def test_a_worker_lives_from_start_to_stop(db_engine: Engine, db_session: Session) -> None:
    shard = _first_shard(db_session, add_job(db_session))
    worker = Worker(id="host:cuda0", hostname="host", device="cuda:0", presets=["tiny"])
    db_session.add(worker)
    db_session.flush()
    assert worker.status is WorkerStatus.STARTING

    worker.ready(now=T0)
    worker.take(shard.id, now=T0)
    db_session.commit()
    assert _reread(db_engine, Worker, "host:cuda0").current_shard_id == shard.id

    worker.drain(now=T0)
    worker.resume(now=T0)
    worker.drain(now=T0)
    worker.release(done=3, failed=1, now=T0 + timedelta(seconds=40))
    worker.stop()
    db_session.commit()

    read = _reread(db_engine, Worker, "host:cuda0")
    assert read.status is WorkerStatus.STOPPED
    assert (read.renders_done, read.renders_failed, read.current_shard_id) == (3, 1, None)
    assert read.last_heartbeat == T0 + timedelta(seconds=40)
    assert read.presets == ["tiny"]
    with pytest.raises(TransitionError, match="register again"):
        read.beat()


@pytest.mark.parametrize(
    ("row", "move"),
    [
        (Render(id=1, status=RenderStatus.QUEUED), lambda r: r.finish("k")),
        (Render(id=1, status=RenderStatus.DONE), lambda r: r.start("w", "cuda:0")),
        (Render(id=1, status=RenderStatus.CANCELLED), lambda r: r.fail("late")),
        (Shard(id=1, status=ShardStatus.QUEUED, attempts=0, max_attempts=3), lambda s: s.renew(9)),
        (Shard(id=1, status=ShardStatus.SUCCEEDED), lambda s: s.cancel()),
        (Job(id="j", status=JobStatus.QUEUED), lambda j: j.succeed()),
        (Job(id="j", status=JobStatus.FAILED), lambda j: j.start()),
        (Worker(id="w", status=WorkerStatus.IDLE), lambda w: w.release(done=1, failed=0)),
        (Worker(id="w", status=WorkerStatus.LOST), lambda w: w.take(1)),
        (Worker(id="w", status=WorkerStatus.IDLE), lambda w: w.resume()),
    ],
)
def test_an_impossible_move_raises_and_changes_nothing(row: object, move: object) -> None:
    before = row.status  # type: ignore[attr-defined]
    with pytest.raises(TransitionError, match=f"is {before}; it cannot become"):
        move(row)  # type: ignore[operator]
    assert row.status is before  # type: ignore[attr-defined]
