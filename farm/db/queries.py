"""The queries on the hot paths, each shaped to be answered from one index.

The dashboard polls progress for every open job and the reaper scans leases every few seconds,
so both must stay cheap on a table of millions of renders: tests check the statement count and,
on PostgreSQL, the query plan.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from farm.db.models import Render, Shard
from farm.db.states import RenderStatus, ShardStatus


def job_progress(session: Session, job_id: str) -> dict[RenderStatus, int]:
    """How many of the job's renders are in each state, every state present (zero if none).

    One GROUP BY on the (job_id, status) index, never a load of the render rows.
    """
    counts = session.execute(
        select(Render.status, func.count()).where(Render.job_id == job_id).group_by(Render.status)
    )
    progress = dict.fromkeys(RenderStatus, 0)
    progress.update(counts.all())
    return progress


def expired_leases(session: Session, now: datetime) -> list[Shard]:
    """Running shards whose worker stopped renewing the lease: the reaper requeues these.

    On PostgreSQL the rows stay locked until the caller's transaction ends and rows another
    reaper holds are skipped, so two reapers never requeue the same shard twice. SQLite
    allows a single writer at a time anyway.
    """
    return list(
        session.scalars(
            select(Shard)
            .where(Shard.status == ShardStatus.RUNNING, Shard.lease_expires < now)
            .order_by(Shard.lease_expires)
            .with_for_update(skip_locked=True)
        )
    )
