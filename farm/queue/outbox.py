"""Sending shards and finalize tasks to the broker, with the farm's tables as the outbox.

A shard is written unsent (`sent` empty) in the transaction that queues it: a submission, a
requeue, a retry. Once that transaction commits its task goes to the broker, then the shard is
marked sent. A broker that is down at that moment fails the send, never the submission: the job
is in SQL, and the reaper's next pass (`send_unsent`) sends what was left unsent once the broker
answers again. A shard sent twice (the mark was lost, or the reaper raced a slow sender) is
harmless: claiming is idempotent.

A job's end goes the same way: the transaction that ends it sets `finalize_pending`, and the
flag is cleared once its finalize task (comic, exports, webhook) is sent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError

from farm.context import Farm
from farm.db.models import Job, Shard
from farm.db.states import JobStatus, ShardStatus
from farm.db.types import utcnow
from farm.queue.app import CONTROL_QUEUE, FINALIZE_JOB, MAX_PRIORITY, RENDER_SHARD, render_queue

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardTask:
    """What the task of one shard carries and where it goes: read from SQL before sending."""

    shard_id: int
    job_id: str
    preset: str
    priority: int  # the farm's: 9 is the most urgent


def send_shards(farm: Farm, tasks: Sequence[ShardTask]) -> list[int]:
    """Send each task, then mark its shard sent; returns the shards sent.

    Call it after the transaction that queued the shards committed: a worker must find the rows
    its task names. A broker error ends the sending and is logged, not raised: the shards not
    sent stay unsent, and the reaper sends them.
    """
    sent: list[int] = []
    for task in tasks:
        try:
            farm.celery.send_task(
                RENDER_SHARD,
                args=[task.shard_id],
                queue=render_queue(task.preset),
                # Celery on Redis serves priority 0 first; the farm's 9 is the most urgent.
                priority=MAX_PRIORITY - task.priority,
                # What Flower, `celery events` and the worker's log show instead of "[12]".
                argsrepr=shard_task_repr(task),
            )
        except (BrokerError, OSError) as error:
            unsent = [t.shard_id for t in tasks[len(sent) :]]
            log.warning("the broker took no task (%s); the reaper sends shards %s", error, unsent)
            break
        sent.append(task.shard_id)
    if sent:
        try:
            with farm.sessions.begin() as session:
                session.execute(update(Shard).where(Shard.id.in_(sent)).values(sent=utcnow()))
        except SQLAlchemyError as error:  # sent, but still marked unsent: sent again, harmlessly
            log.warning("shards %s were sent but not marked sent: %s", sent, error)
    return sent


def shard_task_repr(task: ShardTask) -> str:
    return f"shard {task.shard_id} of job {task.job_id} ({task.preset}, priority {task.priority})"


def unsent_shards(farm: Farm, settled: datetime) -> list[ShardTask]:
    """The queued shards never sent, last written before `settled`: their sender had its
    chance and failed (the broker was down), or died between its commit and its send."""
    return queued_shards(farm, settled, sent=False)


def queued_shards(farm: Farm, settled: datetime, *, sent: bool) -> list[ShardTask]:
    """The queued shards of live jobs, last written before `settled`, whose task was handed
    to the broker (`sent`) or never was."""
    with farm.sessions() as session:
        rows = session.execute(
            select(Shard.id, Job.id, Job.preset, Job.priority)
            .join(Job, Job.id == Shard.job_id)
            .where(
                Shard.status == ShardStatus.QUEUED,
                Shard.sent.is_not(None) if sent else Shard.sent.is_(None),
                Shard.updated < settled,
                Job.cancel_requested.is_(False),
            )
            .order_by(Shard.id)
        ).all()
    return [ShardTask(*row) for row in rows]


def send_unsent(
    farm: Farm,
    settled: datetime,
    keep: Callable[[Farm, list[ShardTask]], list[ShardTask]] | None = None,
) -> list[int]:
    """Drain the outbox: send the shards `unsent_shards` finds, those `keep` keeps (the
    reaper's: farm/scheduling.py's `within_caps`); returns those sent."""
    tasks = unsent_shards(farm, settled)
    if keep is not None:
        tasks = keep(farm, tasks)
    return send_shards(farm, tasks) if tasks else []


def send_finalize(farm: Farm, job_id: str) -> bool:
    """Send the finalize task of a job that ended, then clear its `finalize_pending`; False when
    the broker took no task (logged: the reaper sends it)."""
    try:
        farm.celery.send_task(FINALIZE_JOB, args=[job_id], queue=CONTROL_QUEUE, priority=0)
    except (BrokerError, OSError) as error:
        log.warning(
            "the broker took no finalize task of job %s (%s); the reaper sends it", job_id, error
        )
        return False
    try:
        with farm.sessions.begin() as session:
            session.execute(update(Job).where(Job.id == job_id).values(finalize_pending=False))
    except SQLAlchemyError as error:  # sent, but still pending: finalized twice, harmlessly
        log.warning("job %s's finalize task was sent but not marked sent: %s", job_id, error)
    return True


def pending_finalizes(farm: Farm, settled: datetime) -> list[str]:
    """The jobs that ended before `settled` and whose finalize task was never sent: their
    closer had its chance, and the broker was down (or the closer died)."""
    with farm.sessions() as session:
        return list(
            session.scalars(
                select(Job.id)
                .where(
                    Job.finalize_pending.is_(True),
                    Job.status.in_([JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED]),
                    Job.updated < settled,
                )
                .order_by(Job.finished)
            )
        )
