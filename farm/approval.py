"""Approving the scenes of a job submitted with `approval: preview`, all at once or scene by
scene: each approved scene goes to full quality with the seed of its preview (the picked
variant's, after a re-roll), and the job waits, holding no GPU, while scenes remain unapproved.

The dashboard, the API and `farm approve` call `approve_scenes`; the preview itself is
farm/preview.py's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from farm.context import Farm
from farm.db.models import Job, Render, Shard
from farm.db.retry import retried_on_lost_race
from farm.db.states import JobStatus
from farm.errors import InputError
from farm.job_names import short_id
from farm.lifecycle import get_job
from farm.preview import approved_scenes, preview_of, preview_seeds
from farm.queue.outbox import ShardTask, send_shards
from farm.settings import Settings
from farm.story import PlannedRender, Story

TAKES_APPROVALS = (JobStatus.AWAITING_APPROVAL, JobStatus.QUEUED, JobStatus.RUNNING)


@dataclass(frozen=True)
class Approved:
    """What an approval queued: the scenes (numbered from 1), renders and shards."""

    job_id: str
    scenes: list[int]
    renders: int
    shards: int


def approve_scenes(farm: Farm, job_id: str, scenes: Sequence[int] | None = None) -> Approved:
    """Approve `scenes` (numbers from 1; None: every scene not approved yet) of `job_id`.

    Refused, with nothing changed, for a job that was not submitted for approval or has ended,
    a scene that does not exist or is approved already, and a scene whose preview is not
    rendered yet (its seed is not known until then).
    """
    approved, tasks = _approve(farm, job_id, scenes)
    send_shards(farm, tasks)
    farm.events.publish(job_id, "job.approved", scenes=approved.scenes)
    return approved


@retried_on_lost_race
def _approve(
    farm: Farm, job_id: str, numbers: Sequence[int] | None
) -> tuple[Approved, list[ShardTask]]:
    with farm.sessions.begin() as session:
        job = get_job(session, job_id)
        preview = preview_of(session, job.id)
        if preview is None:
            raise InputError(
                f"job {short_id(job.id)} was not submitted for approval (approval: preview); "
                "it renders every scene at full quality already"
            )
        if job.status not in TAKES_APPROVALS:
            raise InputError(
                f"job {short_id(job.id)} is {job.status}; only a job awaiting approval, or "
                "rendering scenes approved before, takes approvals"
            )
        story = Story.model_validate(job.spec)
        wanted = _wanted(job, story, approved_scenes(session, job.id), numbers)
        seeds = preview_seeds(session, preview.id)
        unready = [index + 1 for index in wanted if index not in seeds]
        if unready:
            raise InputError(
                f"the preview of scene(s) {_listed(unready)} of job {short_id(job.id)} is not "
                "rendered yet; approve them once it is"
            )
        planned = [
            dataclasses.replace(p, seed=seeds[p.scene_index]) if p.variant == 0 else p
            for p in story.plan()
            if p.scene_index in wanted
        ]
        shard_ids = _queue_renders(session, job, planned, farm.settings)
        if job.status is JobStatus.AWAITING_APPROVAL:
            job.approve()
        tasks = [ShardTask(s, job.id, job.preset, job.priority) for s in shard_ids]
        numbers_approved = sorted(index + 1 for index in wanted)
        return Approved(job.id, numbers_approved, len(planned), len(tasks)), tasks


def _queue_renders(
    session: Session, job: Job, planned: Sequence[PlannedRender], settings: Settings
) -> list[int]:
    """The approved renders in new shards, numbered after the job's existing ones; their ids."""
    next_index = session.scalar(
        select(func.coalesce(func.max(Shard.index) + 1, 0)).where(Shard.job_id == job.id)
    )
    shard_ids = []
    for offset in range(0, len(planned), settings.shard_size):
        shard = Shard(job_id=job.id, index=next_index, max_attempts=settings.max_attempts)
        next_index += 1
        session.add(shard)
        session.flush()
        shard_ids.append(shard.id)
        session.add_all(
            Render(
                job_id=job.id,
                shard_id=shard.id,
                scene_index=p.scene_index,
                variant=p.variant,
                seed=p.seed,
                prompt=p.prompt,
                negative=p.negative,
                caption=p.caption,
            )
            for p in planned[offset : offset + settings.shard_size]
        )
    session.flush()
    return shard_ids


def _wanted(job: Job, story: Story, done: set[int], numbers: Sequence[int] | None) -> list[int]:
    """The scene indices to approve, checked against the story and what is approved already."""
    count = len(story.scenes)
    if numbers is None:
        wanted = [index for index in range(count) if index not in done]
        if not wanted:
            raise InputError(f"every scene of job {short_id(job.id)} is approved already")
        return wanted
    if not numbers:
        raise InputError("name the scenes to approve (numbered from 1), or approve them all")
    missing = sorted({n for n in numbers if not 1 <= n <= count})
    if missing:
        raise InputError(
            f"job {short_id(job.id)} has scenes 1 to {count}; there is no scene {_listed(missing)}"
        )
    again = sorted({n for n in numbers if n - 1 in done})
    if again:
        raise InputError(f"scene(s) {_listed(again)} of job {short_id(job.id)} approved already")
    return sorted({n - 1 for n in numbers})


def _listed(numbers: Sequence[int]) -> str:
    return ", ".join(str(n) for n in numbers)


def approval_state(session: Session, job: Job) -> dict[int, str]:
    """Each scene's approval, by number from 1: `approved`, `ready` (its preview is rendered)
    or `previewing`; empty for a job that was not submitted for approval."""
    preview = preview_of(session, job.id)
    if preview is None:
        return {}
    done = approved_scenes(session, job.id)
    seeds = preview_seeds(session, preview.id)
    return {
        index + 1: "approved" if index in done else "ready" if index in seeds else "previewing"
        for index in range(len(job.spec.get("scenes", [])))
    }
