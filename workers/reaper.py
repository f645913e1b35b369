"""The reaper (a Celery beat task): shards whose lease expired belong to a dead worker.

It requeues them, or fails them when their attempts are spent, and marks workers whose
heartbeats stopped as lost. Requeued shards are sent again; a duplicate delivery is harmless
because claiming is idempotent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import select

from farm.context import Farm
from farm.db.models import Job, Worker
from farm.db.queries import expired_leases
from farm.db.states import ShardStatus, WorkerStatus
from farm.db.types import utcnow
from farm.jobs import send_shards
from workers.shard import finish_job_if_done

log = logging.getLogger(__name__)


@dataclass
class Reaped:
    requeued: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    lost_workers: list[str] = field(default_factory=list)


def reap(farm: Farm, *, dry_run: bool = False) -> Reaped:
    """Requeue or fail every shard whose lease expired; `dry_run` only reports."""
    settings = farm.settings
    reaped = Reaped()
    resend: list[tuple[str, int, int]] = []
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
                resend.append((job.preset, shard.id, job.priority))
                reaped.requeued.append(shard.id)
            else:
                reaped.failed.append(shard.id)
                session.flush()
                status = finish_job_if_done(session, shard.job_id)
                if status is not None:
                    finished_jobs[shard.job_id] = str(status)
        silent = now - timedelta(seconds=settings.lease_s)
        for worker in session.scalars(
            select(Worker).where(
                Worker.status.in_([WorkerStatus.IDLE, WorkerStatus.BUSY, WorkerStatus.STARTING]),
                Worker.last_heartbeat < silent,
            )
        ):
            reaped.lost_workers.append(worker.id)
            if not dry_run:
                worker.lose()
        if dry_run:
            session.rollback()
    for preset, shard_id, priority in resend:
        send_shards(farm.celery, preset, [shard_id], priority)
    for job_id, status in finished_jobs.items():
        farm.events.publish(job_id, "job.finished", status=status)
    if reaped.requeued or reaped.failed or reaped.lost_workers:
        log.warning(
            "reaper: requeued %s, failed %s, lost workers %s",
            reaped.requeued,
            reaped.failed,
            reaped.lost_workers,
        )
    return reaped
