"""The lifecycle of jobs, shards and renders: every change of their state happens here.

A row moves through a method of its model (farm/db/models.py), and many rows at once through
one statement here; both take the move from the one table in farm/db/states.py, so a bulk
cancel cannot do what `Render.cancel` forbids. What lives here: a batch's renders starting or
failing, a shard cancelled, failed, requeued or ended, a job closed once its last shard ended
and its end announced, a job cancelled or retried, and the reaper's requeue and fail. (Claiming
a shard stays with the worker's claim, workers/shard.py, in the transaction that reads what the
shard needs; which shard a claim takes, and pausing, resuming and reordering a waiting job, are
farm/scheduling.py's.) Functions take the farm and the name of the worker acting, never a worker's
runtime, so the CLI, the dashboard and the reaper call the same code as a worker.

Tasks are sent after the transaction that queued their shards commits (farm/queue/outbox.py);
events are published after it too, since a watcher reacting to one must find SQL agree.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, bindparam, or_, select, update
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from farm import blocklist
from farm.context import Farm
from farm.db.models import Job, Render, Shard, Worker
from farm.db.retry import retried_on_lost_race
from farm.db.states import JOB_MOVES, RENDER_MOVES, JobStatus, RenderStatus, ShardStatus
from farm.db.types import utcnow
from farm.errors import InputError
from farm.preview import awaits_approval, preview_of
from farm.queue.outbox import ShardTask, send_finalize, send_shards

log = logging.getLogger(__name__)

OPEN_SHARD = (ShardStatus.QUEUED, ShardStatus.RUNNING, ShardStatus.PAUSED)
CANCELLED = "cancelled"  # the error a shard's run ends with when its job was cancelled
PAUSED = "paused"  # the error a shard's run ends with when its job was paused
# A shard's ending, tried again while the database is out of reach: first after this, then
# twice as long each time, up to the cap, within `Settings.end_retry_s` in all.
END_BACKOFF_S = 0.25
END_BACKOFF_CAP_S = 8.0

T = TypeVar("T")


# --- Renders, many at once -----------------------------------------------------------------


def _move_renders(
    session: Session, name: str, where: ColumnElement[bool], **values: object
) -> None:
    """Move every render matched by `where` that move `name` may move, in one statement."""
    move = RENDER_MOVES[name]
    session.execute(
        update(Render)
        .where(where, Render.status.in_(move.sources))
        .values(status=move.target, **values)
    )


def _cancel_renders_of(session: Session, shard_ids: Sequence[int], now: datetime) -> None:
    """What `Render.cancel` does, to the shards' renders that may be cancelled."""
    _move_renders(session, "cancel", Render.shard_id.in_(shard_ids), finished=now)


def _fail_renders_of(session: Session, shard_ids: Sequence[int], error: str, now: datetime) -> None:
    """What `Render.fail` does, to the shards' renders not yet ended: a failed shard leaves no
    render waiting. A render that failed already keeps its own error."""
    _move_renders(session, "fail", Render.shard_id.in_(shard_ids), error=error, finished=now)


def _reopen_renders_of(session: Session, shard_ids: Sequence[int]) -> None:
    """What `Render.reopen` does, to the shards' failed and cancelled renders."""
    _move_renders(session, "reopen", Render.shard_id.in_(shard_ids), error=None, finished=None)


def start_renders(
    farm: Farm, worker: str, device: str, job_id: str, render_ids: Sequence[int]
) -> bool:
    """Mark a batch's renders running, in one transaction with the check that its job was not
    cancelled meanwhile; False (and nothing marked) when it was. Raises JobPaused when the job
    was paused meanwhile: the shard stops between batches, as for a cancel."""
    with farm.sessions.begin() as session:
        cancelled, status = session.execute(
            select(Job.cancel_requested, Job.status).where(Job.id == job_id)
        ).one()
        if cancelled:
            return False
        if status is JobStatus.PAUSED:
            raise JobPaused(f"job {job_id} was paused")
        # What `Render.start` does, in one statement for the batch.
        _move_renders(
            session,
            "start",
            Render.id.in_(render_ids),
            worker_id=worker,
            device=device,
            attempts=Render.attempts + 1,
            started=utcnow(),
            finished=None,
            error=None,
        )
    return True


def finish_renders(session: Session, finished: Mapping[int, Mapping[str, Any]]) -> None:
    """What `Render.finish` does, to a batch's renders (render id -> the method's keyword
    arguments), as one statement sent once with every render's values: recording a batch
    costs a round trip, not one per render. Each render's columns are those the method sets on
    a stand-in row, so the two cannot drift apart."""
    if not finished:
        return
    move, now, rows = RENDER_MOVES["finish"], utcnow(), []
    for render_id, arguments in finished.items():
        probe = Render(id=render_id, status=next(iter(move.sources)))
        probe.finish(**arguments, now=now)
        rows.append({k: v for k, v in vars(probe).items() if not k.startswith("_")})
    table = Render.__table__
    columns = sorted(set(rows[0]) - {"id", "status"})
    session.execute(
        update(table)
        .where(
            table.c.id == bindparam("_id"),
            or_(*(table.c.status == source for source in move.sources)),  # no IN: executemany
        )
        .values(status=move.target, **{c: bindparam(f"_{c}") for c in columns}),
        [{"_id": row["id"], **{f"_{c}": row[c] for c in columns}} for row in rows],
    )


class JobPaused(Exception):
    """A batch found its job paused: the shard stops and pauses (farm/scheduling.py)."""


def fail_renders(farm: Farm, render_ids: Sequence[int], error: str) -> None:
    """Renders that can never be made (a scene the pipeline refuses): they fail alone."""
    with farm.sessions.begin() as session:
        for row in session.scalars(select(Render).where(Render.id.in_(render_ids))):
            row.fail(error)


# --- Shards --------------------------------------------------------------------------------


def cancel_shard(session: Session, shard: Shard, now: datetime | None = None) -> None:
    now = now or utcnow()
    shard.cancel(now)
    _cancel_renders_of(session, [shard.id], now)


def fail_shard(session: Session, shard: Shard, error: str, now: datetime | None = None) -> None:
    now = now or utcnow()
    shard.fail(error, now)
    _fail_renders_of(session, [shard.id], error, now)


def requeue_shard(
    session: Session, shard: Shard, reason: str, now: datetime | None = None
) -> ShardTask | None:
    """Give the shard back (an expired lease, an error); the task to send it again with, or
    None when its attempts are spent and it failed (its renders with it), or when it waits
    with its paused job."""
    now = now or utcnow()
    if shard.requeue(reason, now) is ShardStatus.QUEUED:
        job = session.get_one(Job, shard.job_id)
        if job.status is JobStatus.PAUSED:
            shard.pause()  # sent again once the job resumes
            return None
        return ShardTask(shard.id, job.id, job.preset, job.priority)
    _fail_renders_of(session, [shard.id], shard.error or reason, now)
    return None


def end_shard(farm: Farm, worker: str, shard_id: int, job_id: str, error: str | None) -> str:
    """Close a shard that `worker` ran: succeeded, cancelled (`error` is CANCELLED), or on an
    error requeued while attempts last and failed after, with that error. Returns what became
    of it. Tried again with backoff while the database is out of reach, so an outage of a few
    seconds does not leave the shard to its lease."""
    return _while_database_returns(
        farm, f"ending shard {shard_id}", lambda: _end_shard(farm, worker, shard_id, job_id, error)
    )


@retried_on_lost_race
def _end_shard(farm: Farm, worker: str, shard_id: int, job_id: str, error: str | None) -> str:
    resend = None
    with farm.sessions.begin() as session:
        shard = session.get_one(Shard, shard_id, with_for_update=True)
        if shard.status is not ShardStatus.RUNNING or shard.worker_id != worker:
            return f"lost the shard meanwhile (now {shard.status})"  # reaped while it ran
        if error is None:
            failed = session.scalar(
                select(Render.id).where(
                    Render.shard_id == shard_id, Render.status == RenderStatus.FAILED
                )
            )
            if failed is None:
                shard.succeed()
            else:
                shard.fail("some scenes could not be rendered; see their errors")
        elif error == CANCELLED:
            cancel_shard(session, shard)
        elif error == PAUSED:
            shard.pause()  # not an attempt: the producer stopped it, not a fault
            job = session.get_one(Job, job_id)
            if job.status is not JobStatus.PAUSED:  # resumed while the shard stopped
                shard.resume()
                resend = ShardTask(shard.id, job.id, job.preset, job.priority)
        else:
            blocklist.record_failure(session, job_id, worker, error)
            resend = requeue_shard(session, shard, error)
        outcome = str(shard.status)
    if resend is not None:
        send_shards(farm, [resend])
        outcome = "queued (its job resumed)" if error == PAUSED else "requeued after an error"
    farm.events.publish(job_id, f"shard.{outcome.split()[0]}", shard=shard_id, error=error)
    return outcome


def interrupt_shard(
    farm: Farm,
    worker: str,
    shard_id: int,
    job_id: str,
    reason: str,
    checkpoint_key: str | None = None,
    checkpoint_step: int | None = None,
) -> str:
    """Give back a shard whose worker was told to stop (preemption, scale-down, drain): its
    run is not an attempt, its unfinished renders wait again, and the next run resumes from
    `checkpoint_key` (at `checkpoint_step`) when the run left one. Sent again at once, for
    another worker to take. Returns what became of it."""

    @retried_on_lost_race
    def interrupt() -> ShardTask | None:
        with farm.sessions.begin() as session:
            shard = session.get_one(Shard, shard_id, with_for_update=True)
            if shard.status is not ShardStatus.RUNNING or shard.worker_id != worker:
                return None  # reaped while it ran: the reaper has sent it again
            shard.interrupt(reason, checkpoint_key, checkpoint_step)
            _move_renders(session, "interrupt", Render.shard_id == shard_id)
            job = session.get_one(Job, job_id)
            return ShardTask(shard.id, job.id, job.preset, job.priority)

    task = _while_database_returns(farm, f"interrupting shard {shard_id}", interrupt)
    if task is None:
        return "lost the shard meanwhile"
    send_shards(farm, [task])
    farm.events.publish(job_id, "shard.interrupted", shard=shard_id, step=checkpoint_step)
    return "interrupted"


def release_worker(farm: Farm, worker: str, shard_id: int, done: int, failed: int) -> None:
    """Credit the worker with the shard's renders; it is idle unless it took the next shard
    while this one was stored."""

    def release() -> None:
        with farm.sessions.begin() as session:
            row = session.get(Worker, worker)
            if row is not None:
                if row.current_shard_id == shard_id:
                    row.current_shard_id = None
                row.renders_done += done
                row.renders_failed += failed
                row.beat()

    _while_database_returns(farm, f"releasing {worker} from shard {shard_id}", release)


def _while_database_returns(farm: Farm, what: str, transaction: Callable[[], T]) -> T:
    """Run `transaction`, again after a pause while the database cannot be reached, for at
    most `end_retry_s`; then its last error is raised."""
    deadline = time.monotonic() + farm.settings.end_retry_s
    pause = END_BACKOFF_S
    while True:
        try:
            return transaction()
        except (OperationalError, InterfaceError) as error:
            if time.monotonic() + pause > deadline:
                raise
            log.warning("%s: the database is out of reach, again in %.2f s: %s", what, pause, error)
            time.sleep(pause)
            pause = min(pause * 2, END_BACKOFF_CAP_S)


# --- Jobs ----------------------------------------------------------------------------------


def finish_job_if_done(session: Session, job_id: str) -> JobStatus | None:
    """Close the job once no shard is queued or running; None while work remains.

    The job row is locked, so of two workers ending the last two shards at once exactly one
    sees the job open and closes it. A failed job carries the error of its first failed shard,
    so that `farm status` and the job page say what went wrong, not only that something did.
    """
    job = session.get(Job, job_id, with_for_update=True)
    if job is None or job.status not in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSED):
        return None
    open_shard = session.scalar(
        select(Shard.id).where(Shard.job_id == job_id, Shard.status.in_(OPEN_SHARD))
    )
    if open_shard is not None:
        return None
    failed = session.execute(
        select(Shard.index, Shard.error)
        .where(Shard.job_id == job_id, Shard.status == ShardStatus.FAILED)
        .order_by(Shard.index)
    ).all()
    ends = job.cancel_requested or failed or job.status is JobStatus.PAUSED
    if not ends and awaits_approval(session, job):  # its approved scenes are done, others wait
        job.await_approval()
        return None
    job.finalize_pending = True  # in this transaction: the end is announced, now or by the reaper
    if job.cancel_requested:
        job.cancel()
    elif failed:
        if job.status is not JobStatus.PAUSED:
            job.start()  # a job whose only shard failed at its claim never ran
        index, error = failed[0]
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        job.fail(f"shard {index} failed{more}: {error}; `farm retry` sends what failed again")
    else:
        if job.status is JobStatus.QUEUED:
            job.start()  # approved scenes whose renders the project had: none had to run
        job.succeed()
    return job.status


def close_job(farm: Farm, job_id: str) -> JobStatus | None:
    """End the job if its last shard has ended, and announce it; what it ended as, or None."""

    @retried_on_lost_race
    def close() -> JobStatus | None:
        with farm.sessions.begin() as session:
            return finish_job_if_done(session, job_id)

    status = _while_database_returns(farm, f"closing job {job_id}", close)
    if status is not None:
        announce_job_end(farm, job_id, status)
    return status


def announce_job_end(farm: Farm, job_id: str, status: JobStatus) -> None:
    """Tell the watchers, and queue the job's finalize task (comic, exports, webhook); called by
    whoever closed the job (the last shard's worker, or the reaper), after its commit. A broker
    that is down leaves the finalize pending, for the reaper."""
    farm.events.publish(job_id, "job.finished", status=str(status))
    send_finalize(farm, job_id)


def get_job(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise InputError(f"no job {job_id!r}")
    return job


CANCELS = JOB_MOVES["cancel"].sources  # the jobs `farm cancel` takes


@retried_on_lost_race
def cancel_job(farm: Farm, job_id: str) -> Job:
    """Queued shards end cancelled at once; a running shard stops at its next render."""
    now = utcnow()
    with farm.sessions.begin() as session:
        job = get_job(session, job_id)
        if job.status not in CANCELS:
            raise InputError(
                f"job {job_id} is {job.status}; only queued, running, paused or awaiting "
                "approval jobs cancel"
            )
        job.request_cancel()
        queued = list(
            session.scalars(
                select(Shard).where(
                    Shard.job_id == job_id,
                    Shard.status.in_([ShardStatus.QUEUED, ShardStatus.PAUSED]),
                )
            )
        )
        for shard in queued:
            shard.cancel(now)
        _cancel_renders_of(session, [s.id for s in queued], now)
        running = session.scalar(
            select(Shard.id).where(Shard.job_id == job_id, Shard.status == ShardStatus.RUNNING)
        )
        if running is None:
            job.cancel(now)
        preview = preview_of(session, job_id)
    if preview is not None and preview.status in CANCELS:
        cancel_job(farm, preview.id)  # its preview no longer serves anything
    farm.events.publish(job_id, "job.cancel_requested")
    return job


@retried_on_lost_race
def retry_job(farm: Farm, job_id: str) -> int:
    """Send the failed (and cancelled) shards of a finished job again; returns how many."""
    with farm.sessions.begin() as session:
        job = get_job(session, job_id)
        if job.status in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSED):
            raise InputError(f"job {job_id} is still {job.status}; retry it once it has ended")
        shards = list(
            session.scalars(
                select(Shard).where(
                    Shard.job_id == job_id,
                    Shard.status.in_([ShardStatus.FAILED, ShardStatus.CANCELLED]),
                )
            )
        )
        if not shards:
            raise InputError(f"job {job_id} has no failed or cancelled shards to retry")
        for shard in shards:
            shard.reopen()
        _reopen_renders_of(session, [s.id for s in shards])
        blocklist.clear(session, job_id)
        job.reopen()
        tasks = [ShardTask(s.id, job.id, job.preset, job.priority) for s in shards]
    send_shards(farm, tasks)
    farm.events.publish(job_id, "job.retried", shards=len(tasks))
    return len(tasks)


# --- The reaper's part -----------------------------------------------------------------------


def reap_expired(
    session: Session, shard: Shard, now: datetime
) -> tuple[ShardTask | None, JobStatus | None]:
    """A shard whose lease expired: requeued (the task to send again), or failed with its
    renders when no attempt is left, which may end its job (the status it ended as)."""
    reason = f"lease expired on {shard.worker_id} (no heartbeat since {shard.lease_expires})"
    if shard.worker_id is not None:  # the run died with its worker, or took it down
        blocklist.record_failure(session, shard.job_id, shard.worker_id, reason)
    task = requeue_shard(session, shard, reason, now)
    if task is not None:
        return task, None
    session.flush()
    return None, finish_job_if_done(session, shard.job_id)
