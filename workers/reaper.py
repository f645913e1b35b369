"""The reaper (a Celery beat task): shards whose lease expired belong to a dead worker.

It requeues them, or fails them when their attempts are spent, and marks workers whose
heartbeats stopped as lost. Requeued shards are sent again; a duplicate delivery is harmless
because claiming is idempotent.

It also sends again the queued shards whose task the broker lost: a Redis restarted without
persistence forgets its queues, and a send that fails after its transaction committed (the
broker was down) leaves a queued shard that no task names. Such a shard would wait forever,
since only running shards have a lease to expire.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from celery import Celery
from sqlalchemy import select, update

from farm.context import Farm
from farm.db.models import Job, Render, Shard, Worker
from farm.db.queries import expired_leases
from farm.db.states import RenderStatus, ShardStatus, WorkerStatus
from farm.db.types import utcnow
from farm.jobs import send_shards
from farm.queue.app import render_queue
from farm.queue.depths import queue_depths
from workers.finalize import announce_job_end
from workers.shard import finish_job_if_done

log = logging.getLogger(__name__)


@dataclass
class Reaped:
    requeued: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    lost_workers: list[str] = field(default_factory=list)
    resent: list[int] = field(default_factory=list)  # queued, but the broker held no task


def reap(farm: Farm, *, dry_run: bool = False) -> Reaped:
    """Requeue or fail every shard whose lease expired; `dry_run` only reports."""
    settings = farm.settings
    reaped = Reaped()
    resend: list[tuple[str, str, int, int]] = []
    finished_jobs: dict[str, str] = {}
    now = utcnow()
    with farm.sessions.begin() as session:
        for shard in expired_leases(session, now):
            reason = (
                f"lease expired on {shard.worker_id} (no heartbeat since {shard.lease_expires})"
            )
            if dry_run:
                target = reaped.requeued if shard.attempts_left else reaped.failed
                target.append(shard.id)
                continue
            if shard.requeue(reason, now) is ShardStatus.QUEUED:
                job = session.get(Job, shard.job_id)
                resend.append((job.id, job.preset, shard.id, job.priority))
                reaped.requeued.append(shard.id)
            else:
                reaped.failed.append(shard.id)
                # Its renders fail with it, or a failed job would show renders still waiting.
                session.execute(
                    update(Render)
                    .where(
                        Render.shard_id == shard.id,
                        Render.status.in_([RenderStatus.QUEUED, RenderStatus.RUNNING]),
                    )
                    .values(status=RenderStatus.FAILED, error=shard.error, finished=now)
                )
                session.flush()
                status = finish_job_if_done(session, shard.job_id)
                if status is not None:
                    finished_jobs[shard.job_id] = str(status)
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
    for job_id, preset, shard_id, priority in resend:
        send_shards(farm.celery, preset, [shard_id], priority, job_id=job_id)
    for job_id, status in finished_jobs.items():
        announce_job_end(farm, job_id, status)
    for job_id, preset, shard_id, priority in orphaned_shards(farm, now):
        reaped.resent.append(shard_id)
        if not dry_run:
            send_shards(farm.celery, preset, [shard_id], priority, job_id=job_id)
    if reaped.requeued or reaped.failed or reaped.lost_workers or reaped.resent:
        log.warning(
            "reaper: requeued %s, failed %s, lost workers %s, resent lost tasks of %s",
            reaped.requeued,
            reaped.failed,
            reaped.lost_workers,
            reaped.resent,
        )
    return reaped


def orphaned_shards(farm: Farm, now: datetime) -> list[tuple[str, str, int, int]]:
    """(job, preset, shard, priority) of the queued shards that no task in the broker names.

    A shard counts once it has been queued for two reaper passes while the queue of its
    preset is empty: nothing left in the queue means nothing will ever deliver it. The broker
    keeps no index from task to shard, so a shard is not looked up in a queue that still
    holds messages; its turn comes once the queue drains. A shard that a worker has just taken
    but not yet claimed may be sent twice, which claiming makes harmless.
    """
    settled = now - timedelta(seconds=2 * farm.settings.reap_interval_s)
    with farm.sessions() as session:
        rows = session.execute(
            select(Job.id, Job.preset, Shard.id, Job.priority)
            .join(Job, Job.id == Shard.job_id)
            .where(
                Shard.status == ShardStatus.QUEUED,
                Shard.updated < settled,
                Job.cancel_requested.is_(False),
            )
            .order_by(Shard.id)
        ).all()
    if not rows:
        return []
    empty = _empty_queues(farm.celery, sorted({preset for _, preset, _, _ in rows}))
    return [(job, preset, shard, prio) for job, preset, shard, prio in rows if preset in empty]


def _empty_queues(celery: Celery, presets: Sequence[str]) -> set[str]:
    """The presets whose render queue holds no message; none when the broker cannot say."""
    depths = queue_depths(celery, [render_queue(preset) for preset in presets])
    return {preset for preset in presets if depths[render_queue(preset)].messages == 0}
