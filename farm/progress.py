"""A job's progress as a person follows it: per render, and per denoising step of the renders
running now, with an ETA and, while no worker serves its preset, why it waits. `farm status`,
the job page, its live stream and the API all read it here, so they never disagree.

A shard's renders run as one batch and end together; counting only finished renders left a
job at 0% for the whole of its first shard. The worker records the step its batch has reached
on the batch's rows (workers/steps.py), so a running render counts for its share of steps.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from farm.accounting import job_usage
from farm.approval import approval_note
from farm.db.models import Job, Render, Shard
from farm.db.queries import job_progress
from farm.db.states import JobStatus, RenderStatus, ShardStatus
from farm.estimates import seconds_per_render, spread_seconds
from farm.lifecycle import get_job
from farm.serving import served_presets, waiting_note

LIVE_JOB = (JobStatus.QUEUED, JobStatus.RUNNING)
ENDED_RENDER = (RenderStatus.DONE, RenderStatus.FAILED, RenderStatus.CANCELLED)


@dataclass(frozen=True)
class RunningRender:
    render_id: int
    scene: int
    variant: int
    steps_done: int
    steps: int | None  # None until its batch's first step is recorded

    @property
    def fraction(self) -> float:
        return min(self.steps_done / self.steps, 1.0) if self.steps else 0.0


@dataclass(frozen=True)
class JobReport:
    job_id: str
    status: JobStatus
    preset: str
    total: int
    counts: dict[RenderStatus, int]
    running: list[RunningRender]
    per_render_s: float | None  # measured (farm/estimates.py); None: no figures yet
    eta_s: float | None  # None: ended, waiting for a worker, or no figures yet
    waiting: str | None  # why it cannot move: no live worker serves its preset
    device_s: float = 0.0  # what its finished renders held their devices for (farm/accounting.py)

    @property
    def done(self) -> int:
        return self.counts[RenderStatus.DONE]

    @property
    def fraction(self) -> float:
        """Finished renders, plus each running render's share of its steps."""
        if not self.total:
            return 1.0
        return min((self.done + sum(r.fraction for r in self.running)) / self.total, 1.0)

    def as_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "status": str(self.status),
            "preset": self.preset,
            "total": self.total,
            "counts": {str(state): n for state, n in self.counts.items()},
            "fraction": round(self.fraction, 4),
            "percent": int(100 * self.fraction),
            "running": [
                {
                    "render_id": r.render_id,
                    "scene": r.scene,
                    "variant": r.variant,
                    "steps_done": r.steps_done,
                    "steps": r.steps,
                }
                for r in self.running
            ],
            "per_render_s": None if self.per_render_s is None else round(self.per_render_s, 3),
            "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
            "waiting": self.waiting,
            "device_s": round(self.device_s, 3),
        }


def job_report(session: Session, job_id: str, now: datetime | None = None) -> JobReport:
    """Raises FarmError for an unknown job, as every command that names one does."""
    job = get_job(session, job_id)
    counts = job_progress(session, job_id)
    running = [
        RunningRender(*row)
        for row in session.execute(
            select(Render.id, Render.scene_index, Render.variant, Render.steps_done, Render.steps)
            .where(Render.job_id == job_id, Render.status == RenderStatus.RUNNING)
            .order_by(Render.scene_index, Render.variant)
        ).all()
    ]
    device_s = job_usage(session, [job.id])[job.id].device_s
    report = JobReport(
        job.id,
        job.status,
        job.preset,
        job.renders_total,
        counts,
        running,
        None,
        None,
        None,
        device_s,
    )
    if job.status is JobStatus.AWAITING_APPROVAL:  # it holds no GPU: no ETA, a note instead
        return replace(report, waiting=approval_note(session, job))
    if job.status not in LIVE_JOB:
        return report
    served = served_presets(session, now)
    per_render = seconds_per_render(session, job)
    waiting = waiting_note(job.preset, served)
    eta = None
    if per_render is not None and waiting is None:
        left = job.renders_total - sum(counts[s] for s in ENDED_RENDER)
        left -= sum(r.fraction for r in running)
        shards = _shards_left(session, job)
        eta = spread_seconds(max(left, 0.0), per_render, served[job.preset], shards)
    return JobReport(
        job.id,
        job.status,
        job.preset,
        job.renders_total,
        counts,
        running,
        per_render,
        eta,
        waiting,
        device_s,
    )


def _shards_left(session: Session, job: Job) -> int:
    return session.scalar(
        select(func.count())
        .select_from(Shard)
        .where(Shard.job_id == job.id, Shard.status.in_([ShardStatus.QUEUED, ShardStatus.RUNNING]))
    )


def eta_text(seconds: float | None) -> str:
    """`ETA 1m05s` for a person; empty when there is no estimate."""
    if seconds is None:
        return ""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"ETA {hours}h{minutes:02d}m"
    return f"ETA {minutes}m{secs:02d}s" if minutes else f"ETA {secs}s"


# --- Shards ----------------------------------------------------------------------------------

# The job page's shard table lists this many, those a person looks for first: running, then
# failed, paused, queued, cancelled and succeeded, each in shard order. A 10,000-scene story
# has 2,500 shards; the page counts them by state, and the API pages through them all.
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
