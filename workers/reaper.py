"""The reaper (a Celery beat task): shards whose lease expired belong to a dead worker.

It requeues them, or fails them when their attempts are spent, and marks workers whose
heartbeats stopped as lost. Requeued shards are sent again; a duplicate delivery is harmless
because claiming is idempotent.

It also sends the queued shards whose task never reached the broker (the outbox of
farm/queue/outbox.py: the broker was down when they were queued), and sends again those whose
task the broker lost (a Redis restarted without persistence forgets its queues). Such shards
would wait forever, since only running shards have a lease to expire. Likewise it sends the
finalize task of a job that ended while the broker was down. The state changes themselves are
farm/lifecycle.py's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from celery import Celery
from sqlalchemy import select

from farm.context import Farm
from farm.db.models import Worker
from farm.db.queries import expired_leases
from farm.db.states import JobStatus, WorkerStatus
from farm.db.types import utcnow
from farm.lifecycle import announce_job_end, reap_expired
from farm.queue.app import render_queue
from farm.queue.depths import queue_depths
from farm.queue.outbox import (
    ShardTask,
    pending_finalizes,
    queued_shards,
    send_finalize,
    send_shards,
    send_unsent,
    unsent_shards,
)
from farm.scheduling import within_caps

log = logging.getLogger(__name__)


@dataclass
class Reaped:
    requeued: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    lost_workers: list[str] = field(default_factory=list)
    unsent: list[int] = field(default_factory=list)  # queued, but the send never happened
    resent: list[int] = field(default_factory=list)  # queued, but the broker held no task
    finalized: list[str] = field(default_factory=list)  # jobs ended, finalize never sent


def reap(farm: Farm, *, dry_run: bool = False) -> Reaped:
    """Requeue or fail every shard whose lease expired, and send what the broker never got;
    `dry_run` only reports."""
    settings = farm.settings
    reaped = Reaped()
    resend: list[ShardTask] = []
    finished_jobs: dict[str, JobStatus] = {}
    now = utcnow()
    with farm.sessions.begin() as session:
        for shard in expired_leases(session, now):
            if dry_run:
                target = reaped.requeued if shard.attempts_left else reaped.failed
                target.append(shard.id)
                continue
            task, job_status = reap_expired(session, shard, now)
            if task is not None:
                resend.append(task)
                reaped.requeued.append(shard.id)
            else:
                reaped.failed.append(shard.id)
                if job_status is not None:
                    finished_jobs[shard.job_id] = job_status
        silent = now - timedelta(seconds=settings.lease_s)
        for worker in session.scalars(
            select(Worker).where(
                # A draining worker renders its last shard: it can die in it as well.
                Worker.status.in_(
                    [
                        WorkerStatus.STARTING,
                        WorkerStatus.IDLE,
                        WorkerStatus.BUSY,
                        WorkerStatus.DRAINING,
                    ]
                ),
                Worker.last_heartbeat < silent,
            )
        ):
            reaped.lost_workers.append(worker.id)
            if not dry_run:
                worker.lose()
        if dry_run:
            session.rollback()
    send_shards(farm, resend)
    for job_id, status in finished_jobs.items():
        announce_job_end(farm, job_id, status)
    settled = now - timedelta(seconds=settings.reap_interval_s)
    if dry_run:
        reaped.unsent = [task.shard_id for task in unsent_shards(farm, settled)]
    else:
        # A capped project's held-back shards wait for room, not for the next pass.
        reaped.unsent = send_unsent(farm, settled, keep=within_caps)
    for task in orphaned_shards(farm, now):
        reaped.resent.append(task.shard_id)
        if not dry_run:
            send_shards(farm, [task])
    for job_id in pending_finalizes(farm, settled):
        if not dry_run and not send_finalize(farm, job_id):
            break  # the broker is still down: the next pass tries again
        reaped.finalized.append(job_id)
    if any(vars(reaped).values()):
        log.warning(
            "reaper: requeued %s, failed %s, lost workers %s, sent unsent %s, "
            "resent lost tasks of %s, sent the finalize of jobs %s",
            reaped.requeued,
            reaped.failed,
            reaped.lost_workers,
            reaped.unsent,
            reaped.resent,
            reaped.finalized,
        )
    return reaped


def orphaned_shards(farm: Farm, now: datetime) -> list[ShardTask]:
    """The queued shards, sent once, that no task in the broker names any more.

    A shard counts once it has been queued for two reaper passes while the queue of its
    preset is empty: nothing left in the queue means nothing will ever deliver it. The broker
    keeps no index from task to shard, so a shard is not looked up in a queue that still
    holds messages; its turn comes once the queue drains. A shard that a worker has just taken
    but not yet claimed may be sent twice, which claiming makes harmless.
    """
    settled = now - timedelta(seconds=2 * farm.settings.reap_interval_s)
    tasks = queued_shards(farm, settled, sent=True)  # the unsent ones are `send_unsent`'s
    if not tasks:
        return []
    empty = _empty_queues(farm.celery, sorted({task.preset for task in tasks}))
    return [task for task in tasks if task.preset in empty]


def _empty_queues(celery: Celery, presets: Sequence[str]) -> set[str]:
    """The presets whose render queue holds no message; none when the broker cannot say."""
    depths = queue_depths(celery, [render_queue(preset) for preset in presets])
    return {preset for preset in presets if depths[render_queue(preset)].messages == 0}
