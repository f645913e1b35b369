"""Which variant of each scene the comic shows: the one a person picked, else the one whose face
is closest to the character's photos, else the first.

A studio renders several variants of a scene to choose from, and the comic, its PDF and CBZ
and the renders zip must show the choice, not variant 0. Scenes are numbered from 1 wherever a
person names them (the CLI, the API's `scene`), variants as their files name them (`v0`, `v1`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.context import Farm
from farm.db.models import Job, Render
from farm.db.retry import retried_on_lost_race
from farm.db.states import JobStatus, RenderStatus
from farm.errors import InputError
from farm.queue.app import CONTROL_QUEUE, FINALIZE_JOB
from farm.story import Story

log = logging.getLogger(__name__)

PICKED = "picked"  # by a person
BEST_FACE = "best face"  # the highest face similarity among the scene's variants
FIRST = "first"  # no face was scored: the lowest variant
ENDED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass(frozen=True)
class Pick:
    """The render a scene shows, and why it is that one."""

    render: Render
    reason: str

    @property
    def scene_number(self) -> int:
        return self.render.scene_index + 1

    def describe(self) -> str:
        return f"scene {self.scene_number}: v{self.render.variant} ({self.reason})"


def choose(variants: Sequence[Render]) -> Pick:
    """A scene's pick among its finished variants (at least one)."""
    for render in variants:
        if render.picked:
            return Pick(render, PICKED)
    scored = [r for r in variants if r.face_similarity is not None]
    if scored:
        # The best face; of equal ones the lowest variant, so that a rebuild never flips.
        best = max(scored, key=lambda r: (r.face_similarity, -r.variant))
        return Pick(best, BEST_FACE)
    return Pick(min(variants, key=lambda r: r.variant), FIRST)


def finished_renders(session: Session, job_id: str) -> list[Render]:
    """The job's stored renders in scene order: what its comic, PDF and zip are made of."""
    return list(
        session.scalars(
            select(Render)
            .where(
                Render.job_id == job_id,
                Render.status == RenderStatus.DONE,
                Render.storage_key.is_not(None),
            )
            .order_by(Render.scene_index, Render.variant)
        )
    )


def picks_among(renders: Iterable[Render]) -> list[Pick]:
    """One pick per scene of these finished renders, in scene order."""
    scenes: dict[int, list[Render]] = {}
    for row in sorted(renders, key=lambda r: (r.scene_index, r.variant)):
        scenes.setdefault(row.scene_index, []).append(row)
    return [choose(variants) for variants in scenes.values()]


def scene_picks(session: Session, job_id: str) -> list[Pick]:
    """One pick per scene with a finished render, in scene order."""
    return picks_among(finished_renders(session, job_id))


def job_in_project(
    session: Session, job_id: str, project_id: int | None, *, lock: bool = False
) -> Job:
    """The job, if the caller's project may touch it (None: any project, as the CLI may)."""
    job = session.get(Job, job_id, with_for_update=lock)
    if job is None or (project_id is not None and job.project_id != project_id):
        raise InputError(f"no job {job_id!r}")
    return job


def scene_index(job: Job, scene_number: int) -> int:
    """The index of scene `scene_number` (from 1) of the job's current story."""
    scenes = len(Story.model_validate(job.spec).scenes)
    if not 1 <= scene_number <= scenes:
        raise InputError(f"job {job.id} has scenes 1 to {scenes}; there is no scene {scene_number}")
    return scene_number - 1


@retried_on_lost_race
def pick_variant(
    farm: Farm, job_id: str, scene_number: int, variant: int, *, project_id: int | None = None
) -> Pick:
    """Make `variant` the pick of scene `scene_number`; the job's comic and exports are built
    again with it once the job has ended (at its end otherwise)."""
    with farm.sessions.begin() as session:
        job = job_in_project(session, job_id, project_id)
        index = scene_index(job, scene_number)
        rows = list(
            session.scalars(
                select(Render)
                .where(Render.job_id == job.id, Render.scene_index == index)
                .order_by(Render.variant)
            )
        )
        chosen = next((r for r in rows if r.variant == variant), None)
        if chosen is None:
            have = ", ".join(f"v{r.variant}" for r in rows) or "none yet"
            raise InputError(
                f"scene {scene_number} of job {job.id} has variants {have}; there is no v{variant}"
            )
        if chosen.status is not RenderStatus.DONE:
            raise InputError(
                f"scene {scene_number} v{variant} of job {job.id} is {chosen.status}; only a "
                "finished render can be picked"
            )
        for row in rows:
            row.picked = row is chosen
        rebuild = job.status in ENDED
        pick = Pick(chosen, PICKED)
    farm.events.publish(job_id, "render.picked", scene=index, variant=variant, render=chosen.id)
    if rebuild:
        request_outputs(farm, job_id)
    return pick


def request_outputs(farm: Farm, job_id: str) -> bool:
    """Queue a rebuild of an ended job's comic and exports (the finalize task, without its
    webhook: the job did not end again); False, logged, when the broker took no task: the job
    page's rebuild button, or `farm comic`, does it then."""
    try:
        farm.celery.send_task(
            FINALIZE_JOB,
            args=[job_id],
            kwargs={"webhook": False},
            queue=CONTROL_QUEUE,
            priority=0,
        )
    except (BrokerError, OSError) as error:
        log.warning("the broker took no rebuild of job %s's comic (%s)", job_id, error)
        return False
    return True
