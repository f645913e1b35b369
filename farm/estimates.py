"""How long work will take, from what the farm measured: seconds per render of a preset, a
plan's estimated time and a running job's ETA.

A render's time is what its device spent on it (its share of the batch's identity, denoising
and decoding seconds, as the worker records them); uploads run beside the device and are not
counted. A job's own finished renders are the best figure for the rest of it (same size, same
steps); before it has any, the preset's recent renders on the farm stand in, and a preset the
farm never rendered has no estimate (None) rather than a guess. Work spreads over the live
workers that serve the preset, at most one per shard still to run.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.db.models import Job, Render
from farm.db.states import RenderStatus

RECENT_RENDERS = 50  # enough to smooth a warm-up render out, recent enough to follow the farm


def _device_seconds(rows: list[tuple[float | None, float | None, float | None]]) -> float | None:
    times = [(i or 0.0) + (d or 0.0) + (c or 0.0) for i, d, c in rows if d is not None]
    return statistics.median(times) if times else None


def seconds_per_render(session: Session, preset: str, job_id: str | None = None) -> float | None:
    """The median device seconds of a render: of `job_id`'s finished renders if it has any,
    else of the farm's last `RECENT_RENDERS` on `preset`; None when neither exists."""
    timed = select(Render.identity_s, Render.denoise_s, Render.decode_s).where(
        Render.status == RenderStatus.DONE, Render.denoise_s.is_not(None)
    )
    if job_id is not None:
        own = _device_seconds(
            [tuple(row) for row in session.execute(timed.where(Render.job_id == job_id)).all()]
        )
        if own is not None:
            return own
    recent = session.execute(
        timed.join(Job, Job.id == Render.job_id)
        .where(Job.preset == preset)
        .order_by(Render.finished.desc())
        .limit(RECENT_RENDERS)
    ).all()
    return _device_seconds([tuple(row) for row in recent])


def spread_seconds(renders: float, per_render_s: float, workers: int, shards: int) -> float:
    """Seconds for `renders` at `per_render_s` each, shared by the workers that can take them
    (one per shard at most: a shard runs on one worker)."""
    parallel = max(1, min(workers, shards))
    return renders * per_render_s / parallel


def plan_seconds(
    session: Session, preset: str, renders: int, shards: int, served: Mapping[str, int]
) -> float | None:
    """What a plan of `renders` in `shards` would take on the farm as it is now; None when
    the farm has no figures for the preset, or no live worker serves it."""
    per_render = seconds_per_render(session, preset)
    workers = served.get(preset, 0)
    if per_render is None or not workers:
        return None
    return spread_seconds(renders, per_render, workers, shards)
