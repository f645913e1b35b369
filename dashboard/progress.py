"""A job's progress, shards and timings as plain data: what the job page shows, the live stream
sends and the API returns, read the same way for all three."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from farm.db.models import Job, Render, Shard
from farm.db.states import RenderStatus, ShardStatus
from farm.progress import eta_text, job_report

TIMED_STEPS = ("identity_s", "denoise_s", "decode_s", "upload_s")


def job_summary(session: Session, job_id: str) -> dict[str, Any] | None:
    """Status, counts per render state, fraction done (running renders by their share of
    steps), the ETA and why it waits, and mean seconds per render step."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        return None
    report = job_report(session, job_id)
    counts, reported = report.counts, report.as_json()
    means = session.execute(
        select(*(func.avg(getattr(Render, step)) for step in TIMED_STEPS)).where(
            Render.job_id == job_id, Render.status == RenderStatus.DONE
        )
    ).one()
    return {
        "status": str(job.status),
        "total": job.renders_total,
        "counts": {str(state): n for state, n in counts.items()},
        "fraction": round(report.fraction, 4),
        "percent": int(100 * report.fraction),
        "running": reported["running"],
        "eta_s": reported["eta_s"],
        "eta": eta_text(report.eta_s),
        "waiting": report.waiting,
        "device_s": reported["device_s"],
        "timings": {
            step: None if mean is None else round(mean, 3)
            for step, mean in zip(TIMED_STEPS, means, strict=True)
        },
        # Times rather than an elapsed count, which would change on every read: the page
        # counts the seconds itself.
        "started": job.started.isoformat() if job.started else None,
        "finished": job.finished.isoformat() if job.finished else None,
        "cancel_requested": job.cancel_requested,
        "error": job.error,
    }


# The shard table lists this many, those a person looks for first: running, then failed,
# paused, queued, cancelled and succeeded, each in shard order. A 10,000-scene story has
# 2,500 shards; the page counts them by state and the API pages through them all.
SHARDS_SHOWN = 100
_FIRST = [
    ShardStatus.RUNNING,
    ShardStatus.FAILED,
    ShardStatus.PAUSED,
    ShardStatus.QUEUED,
    ShardStatus.CANCELLED,
    ShardStatus.SUCCEEDED,
]
_WORTH_SEEING = case({str(s): rank for rank, s in enumerate(_FIRST)}, value=Shard.status)


def shard_rows(
    session: Session,
    job_id: str,
    *,
    limit: int | None = SHARDS_SHOWN,
    offset: int = 0,
    status: ShardStatus | None = None,
) -> list[dict[str, Any]]:
    """The job's shards worth seeing first (or those of `status`, in shard order), a page of
    them."""
    query = select(Shard).where(Shard.job_id == job_id)
    if status is not None:
        query = query.where(Shard.status == status).order_by(Shard.index)
    else:
        query = query.order_by(_WORTH_SEEING, Shard.index)
    return [shard_row(shard) for shard in session.scalars(query.limit(limit).offset(offset))]


@dataclass(frozen=True)
class ShardCounts:
    """A job's shards by state, and the runs of them interrupted (preempted, drained)."""

    by_state: dict[str, int]
    interruptions: int

    @property
    def total(self) -> int:
        return sum(self.by_state.values())


def shard_counts(session: Session, job_id: str) -> ShardCounts:
    """One GROUP BY over the job's shards, however many it has."""
    rows = session.execute(
        select(Shard.status, func.count(), func.coalesce(func.sum(Shard.interruptions), 0))
        .where(Shard.job_id == job_id)
        .group_by(Shard.status)
    ).all()
    by_state = {str(state): 0 for state in _FIRST}
    by_state.update({str(state): n for state, n, _ in rows})
    return ShardCounts(by_state, sum(int(stops) for *_, stops in rows))


def shard_row(shard: Shard) -> dict[str, Any]:
    return {
        "index": shard.index,
        "status": str(shard.status),
        "worker_id": shard.worker_id,
        "attempts": shard.attempts,
        "max_attempts": shard.max_attempts,
        "interruptions": shard.interruptions,
        "checkpoint_step": shard.checkpoint_step,
        "error": shard.error,
        "started": shard.started,
        "finished": shard.finished,
        "seconds": (
            round((shard.finished - shard.started).total_seconds(), 1)
            if shard.started and shard.finished
            else None
        ),
    }
