"""How long work will take, from what the farm measured: a story's device seconds before it
is submitted, a plan's time on the farm as it is, and a running job's ETA.

Every figure comes from `Render.device_s`, the seconds a render held its device (its share of
its batch and of its shard's identity encoding, plus its QC re-renders; never a model load),
the figure jobs and projects are billed by (farm/accounting.py). A job's own finished renders
are the best figure for the rest of it (same size, same steps); before it has any, and for a
story not yet submitted, the preset's recent jobs on the farm stand in, scaled by denoising
steps x pixels from what they were made at. A preset the farm never rendered has no estimate
(None) rather than a guess. Work spreads over the live workers that serve the preset, at most
one per shard still to run.
"""

from __future__ import annotations

import statistics
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from farm.db.models import Job, Render
from farm.db.states import RenderStatus
from farm.recipe import RenderSettings
from farm.story import Story

# The jobs of a preset whose renders an estimate is read from: the most recent, so that a
# farm's new cards (or a driver upgrade) show within a few jobs.
ESTIMATE_JOBS = 20
# The render settings of jobs, by job and revision (a revision may change them), as this
# process read them: many more than the jobs an estimate reads, few bytes each.
_SETTINGS: OrderedDict[tuple[str, int], RenderSettings] = OrderedDict()
_SETTINGS_KEPT = 4096


@dataclass(frozen=True)
class Estimate:
    """A story's device seconds before it is submitted, from what the farm measured."""

    device_s: float
    per_render_s: float
    measured_renders: int  # the renders the figure was read from


def estimate(session: Session, story: Story) -> Estimate | None:
    """Device seconds for `story`, from the preset's renders on this farm (its last
    `ESTIMATE_JOBS` measured jobs), scaled by steps x pixels from the size and steps those were
    made at; None when the farm has measured none of the preset yet. QC re-renders are in the
    measured figures, at the rate they happened."""
    measured = _measured(session, RenderSettings.of(story))
    if measured is None:
        return None
    per_render, renders = measured
    return Estimate(per_render * len(story.plan()), per_render, renders)


def _measured(session: Session, settings: RenderSettings) -> tuple[float, int] | None:
    """Device seconds of one render made with `settings`, and how many renders that was read
    from; None when the farm has measured none of the preset."""
    recent = (
        select(Render.job_id)
        .join(Job, Job.id == Render.job_id)
        .where(Job.preset == settings.preset, Render.device_s.is_not(None))
        .group_by(Render.job_id)
        .order_by(func.max(Render.finished).desc())
        .limit(ESTIMATE_JOBS)
    )
    measured = session.execute(
        select(Render.job_id, func.sum(Render.device_s), func.count())
        .where(Render.job_id.in_(recent), Render.device_s.is_not(None))
        .group_by(Render.job_id)
    ).all()
    if not measured:
        return None
    made_with = _stored_settings(session, [job_id for job_id, _, _ in measured])
    seconds = sum(float(s) for _, s, _ in measured)
    units = sum(n * _work(made_with[job_id]) for job_id, _, n in measured)
    return seconds / units * _work(settings), sum(int(n) for _, _, n in measured)


def _stored_settings(session: Session, job_ids: Sequence[str]) -> dict[str, RenderSettings]:
    """The render settings of submitted jobs, read from their stored stories in SQL: a few
    values each, where the whole of a 10,000-scene story is megabytes to fetch and validate
    again, and its scenes do not decide them. Even those few values cost a parse of the whole
    story in the database, so each job's are kept (`_SETTINGS`) until its next revision."""
    revisions = dict(session.execute(select(Job.id, Job.revision).where(Job.id.in_(job_ids))).all())
    missing = [
        job_id for job_id, revision in revisions.items() if (job_id, revision) not in _SETTINGS
    ]
    if missing:
        spec = Job.spec
        rows = session.execute(
            select(
                Job.id,
                Job.revision,
                Job.preset,
                spec["width"].as_integer(),
                spec["height"].as_integer(),
                spec["aspect"].as_string(),
                spec["steps"].as_integer(),
                spec["guidance"].as_float(),
            ).where(Job.id.in_(missing))
        )
        for job_id, revision, preset, width, height, aspect, steps, guidance in rows:
            story = Story.model_construct(
                preset=preset,
                width=width,
                height=height,
                aspect=aspect,
                steps=steps,
                guidance=guidance,
            )
            _SETTINGS[job_id, revision] = RenderSettings.of(story)
            while len(_SETTINGS) > _SETTINGS_KEPT:
                _SETTINGS.popitem(last=False)
    return {
        job_id: _SETTINGS[job_id, revision]
        for job_id, revision in revisions.items()
        if (job_id, revision) in _SETTINGS
    }


def _work(settings: RenderSettings) -> int:
    """A render's work in denoising steps x pixels: what its device time grows with."""
    return settings.steps * settings.width * settings.height


def seconds_per_render(session: Session, job: Job) -> float | None:
    """The device seconds of one more render of `job`: the median of its own finished renders
    if it has any, else the estimate for its story; None when neither exists."""
    own = session.scalars(
        select(Render.device_s).where(
            Render.job_id == job.id,
            Render.status == RenderStatus.DONE,
            Render.device_s.is_not(None),
        )
    ).all()
    if own:
        return statistics.median(own)
    measured = _measured(session, _stored_settings(session, [job.id])[job.id])
    return None if measured is None else measured[0]


def spread_seconds(renders: float, per_render_s: float, workers: int, shards: int) -> float:
    """Seconds for `renders` at `per_render_s` each, shared by the workers that can take them
    (one per shard at most: a shard runs on one worker)."""
    parallel = max(1, min(workers, shards))
    return renders * per_render_s / parallel
