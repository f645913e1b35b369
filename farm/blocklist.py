"""The soft-fail blocklist: a worker that failed two of a job's shards takes no more of them.

A shard that fails on one worker is usually the worker's doing (a driver, a card short of
memory for this job's size, a bad disk), and the retry lands, as often as not, on the same
idle worker, spending the shard's attempts where they cannot succeed. Render managers keep a
per-job list of such workers (Deadline's "bad slaves", OpenCue's per-job host limits); so does
the farm: every failed run (an error, or a lease that ran out under the worker) is counted per
job and worker, and at `WorkerFailures.BLOCKLIST_AFTER` the worker declines that job's shards
at claim time (workers/shard.py), which go back to the queue for another worker. A job that
no live worker may take any more fails with a message that says so, rather than circling.
`farm retry` clears the job's list along with its attempts.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from farm.db.models import Worker, WorkerFailures
from farm.db.states import WorkerStatus

# Workers that take shards now or soon (a starting one is loading its models); a draining
# worker takes no more.
_TAKES_WORK = (WorkerStatus.STARTING, WorkerStatus.IDLE, WorkerStatus.BUSY)


def record_failure(session: Session, job_id: str, worker_id: str, error: str) -> WorkerFailures:
    """Count a failed run of one of `job_id`'s shards against `worker_id`."""
    row = session.scalar(
        select(WorkerFailures)
        .where(WorkerFailures.job_id == job_id, WorkerFailures.worker_id == worker_id)
        .with_for_update()
    )
    if row is None:
        try:
            with session.begin_nested():  # two shards of the job failing at once on the worker
                row = WorkerFailures(job_id=job_id, worker_id=worker_id, failures=0)
                session.add(row)
        except IntegrityError:
            return record_failure(session, job_id, worker_id, error)
    row.failures += 1
    row.last_error = error
    return row


def blocked_workers(session: Session, job_id: str) -> list[WorkerFailures]:
    """The workers kept off `job_id`, in the order they were kept off: what its page shows."""
    return list(
        session.scalars(
            select(WorkerFailures)
            .where(
                WorkerFailures.job_id == job_id,
                WorkerFailures.failures >= WorkerFailures.BLOCKLIST_AFTER,
            )
            .order_by(WorkerFailures.updated, WorkerFailures.worker_id)
        )
    )


def is_blocked(session: Session, job_id: str, worker_id: str) -> bool:
    failures = session.scalar(
        select(WorkerFailures.failures).where(
            WorkerFailures.job_id == job_id, WorkerFailures.worker_id == worker_id
        )
    )
    return failures is not None and failures >= WorkerFailures.BLOCKLIST_AFTER


def workers_left(session: Session, job_id: str, preset: str) -> list[str]:
    """The live workers hosting `preset` that may still take `job_id`'s shards."""
    blocked = {row.worker_id for row in blocked_workers(session, job_id)}
    hosts: Iterable[Worker] = session.scalars(
        select(Worker).where(Worker.status.in_(_TAKES_WORK)).order_by(Worker.id)
    )
    return [w.id for w in hosts if preset in w.presets and w.id not in blocked]


def clear(session: Session, job_id: str) -> None:
    """Forget the job's failures: a retry gives every worker a fresh chance, as it gives the
    shards fresh attempts."""
    session.execute(delete(WorkerFailures).where(WorkerFailures.job_id == job_id))
