"""Rows change state only through the models' methods, which set the timestamps with it, and
only by the moves of the one table in farm/db/states.py: every pair of states is checked."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from farm.db.models import Job, Render, Shard, Worker
from farm.db.states import (
    JobStatus,
    RenderStatus,
    ShardStatus,
    TransitionError,
    WorkerStatus,
    moved,
)
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


# --- The table of moves, every (from, to) pair -------------------------------------------------

# Each model's methods by the name of their move in its table, with the arguments they need.
METHODS: dict[type, dict[str, Callable[[Any], object]]] = {
    Job: {
        "start": lambda j: j.start(),
        "succeed": lambda j: j.succeed(),
        "fail": lambda j: j.fail("error"),
        "cancel": lambda j: j.cancel(),
        "reopen": lambda j: j.reopen(),
        "pause": lambda j: j.pause(),
        "resume": lambda j: (setattr(j, "started", datetime.now(UTC)), j.resume()),
        "resume_unstarted": lambda j: j.resume(),  # a job that never started waits again
        "approve": lambda j: j.approve(),
        "await": lambda j: j.await_approval(),
    },
    Shard: {
        "start": lambda s: s.start("w", 60),
        "renew": lambda s: s.renew(60),
        "requeue": lambda s: s.requeue("error"),
        "interrupt": lambda s: s.interrupt("told to stop"),
        "succeed": lambda s: s.succeed(),
        "fail": lambda s: s.fail("error"),
        "cancel": lambda s: s.cancel(),
        "reopen": lambda s: s.reopen(),
        "pause": lambda s: s.pause(),
        "resume": lambda s: s.resume(),
    },
    Render: {
        "start": lambda r: r.start("w", "cpu"),
        "finish": lambda r: r.finish("key"),
        "fail": lambda r: r.fail("error"),
        "cancel": lambda r: r.cancel(),
        "reopen": lambda r: r.reopen(),
        "interrupt": lambda r: r.interrupt(),
        "reuse": lambda r: r.reuse("key", None, source_job="job"),
    },
    Worker: {
        "ready": lambda w: w.ready(),
        "take": lambda w: w.take(1),
        "release": lambda w: w.release(done=0, failed=0),
        "drain": lambda w: w.drain(),
        "resume": lambda w: w.resume(),
        "stop": lambda w: w.stop(),
        "lose": lambda w: w.lose(),
    },
}
# Calls that are no move and no error: a draining worker that ends its shard stays draining.
STAYS = {(Worker, "release", WorkerStatus.DRAINING)}
STATES = {Job: JobStatus, Shard: ShardStatus, Render: RenderStatus, Worker: WorkerStatus}


def _row(model: type, status: StrEnum) -> Any:
    """A row in `status`, with the counters its methods add to (unset before a flush)."""
    counters = {
        Shard: {"attempts": 0, "max_attempts": 3, "interruptions": 0},
        Render: {"attempts": 0},
        Worker: {"renders_done": 0, "renders_failed": 0},
    }
    return model(id=1, status=status, **counters.get(model, {}))


def test_every_method_is_a_move_of_its_table() -> None:
    assert {model: set(methods) for model, methods in METHODS.items()} == {
        model: set(model.MOVES) for model in METHODS
    }


@pytest.mark.parametrize(
    ("model", "source", "target"),
    [
        (model, source, target)
        for model, states in STATES.items()
        for source in states
        for target in states
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else str(value),
)
def test_every_pair_of_states_is_a_move_of_the_table_or_a_transition_error(
    model: type, source: StrEnum, target: StrEnum
) -> None:
    """Each method that leads to `target` either takes the row there from `source`, when the
    table allows it, or raises TransitionError and leaves the row as it was."""
    moves = {name: move for name, move in model.MOVES.items() if move.target is target}
    for name, move in moves.items():
        row = _row(model, source)
        if source in move.sources:
            METHODS[model][name](row)
            assert row.status is target, name
            assert moved("row", source, model.MOVES, name) is target
        elif (model, name, source) in STAYS:
            METHODS[model][name](row)
            assert row.status is source, name
        else:
            with pytest.raises(TransitionError, match=f"is {source}; it cannot become {target}"):
                METHODS[model][name](row)
            assert row.status is source, name
            with pytest.raises(TransitionError):
                moved("row", source, model.MOVES, name)
    allowed = any(source in move.sources for move in moves.values())
    assert allowed == ((source, target) in _PAIRS[model])


# The pairs each entity may move between, written out: a change to the table changes this too.
_J, _S, _R, _W = JobStatus, ShardStatus, RenderStatus, WorkerStatus
_PAIRS = {
    Job: {
        (_J.QUEUED, _J.RUNNING),
        (_J.RUNNING, _J.RUNNING),
        (_J.RUNNING, _J.SUCCEEDED),
        (_J.QUEUED, _J.FAILED),
        (_J.RUNNING, _J.FAILED),
        (_J.QUEUED, _J.CANCELLED),
        (_J.RUNNING, _J.CANCELLED),
        (_J.FAILED, _J.RUNNING),
        (_J.CANCELLED, _J.RUNNING),
        (_J.SUCCEEDED, _J.RUNNING),
        (_J.QUEUED, _J.PAUSED),
        (_J.RUNNING, _J.PAUSED),
        (_J.PAUSED, _J.QUEUED),
        (_J.PAUSED, _J.RUNNING),
        (_J.PAUSED, _J.SUCCEEDED),
        (_J.PAUSED, _J.FAILED),
        (_J.PAUSED, _J.CANCELLED),
        (_J.QUEUED, _J.AWAITING_APPROVAL),  # its approved scenes are done, others wait
        (_J.RUNNING, _J.AWAITING_APPROVAL),
        (_J.AWAITING_APPROVAL, _J.QUEUED),  # scenes approved
        (_J.AWAITING_APPROVAL, _J.RUNNING),  # a retry of an earlier approval's failed shard
        (_J.AWAITING_APPROVAL, _J.CANCELLED),
    },
    Shard: {
        (_S.QUEUED, _S.RUNNING),
        (_S.RUNNING, _S.RUNNING),
        (_S.RUNNING, _S.QUEUED),
        (_S.RUNNING, _S.SUCCEEDED),
        (_S.QUEUED, _S.FAILED),
        (_S.RUNNING, _S.FAILED),
        (_S.QUEUED, _S.CANCELLED),
        (_S.RUNNING, _S.CANCELLED),
        (_S.FAILED, _S.QUEUED),
        (_S.CANCELLED, _S.QUEUED),
        (_S.QUEUED, _S.PAUSED),
        (_S.RUNNING, _S.PAUSED),
        (_S.PAUSED, _S.QUEUED),
        (_S.PAUSED, _S.CANCELLED),
    },
    Render: {
        (_R.QUEUED, _R.RUNNING),
        (_R.RUNNING, _R.RUNNING),
        (_R.FAILED, _R.RUNNING),
        (_R.RUNNING, _R.DONE),
        (_R.QUEUED, _R.DONE),  # reused: the project has these pixels already (farm/reuse.py)
        (_R.QUEUED, _R.FAILED),
        (_R.RUNNING, _R.FAILED),
        (_R.QUEUED, _R.CANCELLED),
        (_R.RUNNING, _R.CANCELLED),
        (_R.FAILED, _R.QUEUED),
        (_R.CANCELLED, _R.QUEUED),
        (_R.RUNNING, _R.QUEUED),
    },
    Worker: {
        (_W.STARTING, _W.IDLE),
        (_W.IDLE, _W.BUSY),
        (_W.BUSY, _W.IDLE),
        (_W.STARTING, _W.DRAINING),
        (_W.IDLE, _W.DRAINING),
        (_W.BUSY, _W.DRAINING),
        (_W.DRAINING, _W.IDLE),
        *((live, _W.STOPPED) for live in (_W.STARTING, _W.IDLE, _W.BUSY, _W.DRAINING)),
        *((live, _W.LOST) for live in (_W.STARTING, _W.IDLE, _W.BUSY, _W.DRAINING)),
    },
}
