"""Re-rolls: more variants of chosen scenes, with new seeds, queued as new renders of the job.

A studio that rejects 6 panels out of 40 re-rolls those 6, not the story. A re-roll adds
variants after the scene's last one and keeps every variant it has, so the person comparing
them loses nothing (and the pick stays until they pick again). New seeds are drawn at random
and recorded on each render and in its PNG, so every re-roll can be made again exactly; the
renders go to the job's queue at the job's priority, and the job runs again until they are
done, when its comic and exports are built again.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace

from sqlalchemy import func, select

from farm.context import Farm
from farm.db.models import Render
from farm.db.retry import retried_on_lost_race
from farm.db.states import JobStatus
from farm.errors import InputError
from farm.picks import ENDED, job_in_project, scene_index
from farm.queue.outbox import ShardTask, send_shards
from farm.reuse import RecipeHasher, job_people, place_renders
from farm.story import MAX_SEED, MAX_VARIANTS, Story

# Variants one scene may hold, re-rolls included: enough to choose from, and a bound on what a
# click (or a script gone wrong) may queue.
MAX_SCENE_VARIANTS = 4 * MAX_VARIANTS
OPEN = (JobStatus.QUEUED, JobStatus.RUNNING)


@dataclass(frozen=True)
class Rerolled:
    job_id: str
    render_ids: list[int]
    shards: int


@retried_on_lost_race
def reroll(
    farm: Farm,
    job_id: str,
    scene_numbers: Sequence[int],
    *,
    variants: int = 1,
    project_id: int | None = None,
) -> Rerolled:
    """Queue `variants` new variants of each scene in `scene_numbers` (numbered from 1)."""
    if not scene_numbers:
        raise InputError("name at least one scene to re-roll")
    if not 1 <= variants <= MAX_VARIANTS:
        raise InputError(f"variants: from 1 to {MAX_VARIANTS} per re-roll, got {variants}")
    with farm.sessions.begin() as session:
        # Locked: a worker closing the job waits until these shards are in.
        job = job_in_project(session, job_id, project_id, lock=True)
        if job.cancel_requested and job.status in OPEN:
            raise InputError(f"job {job.id} is being cancelled; re-roll once it has ended")
        if job.status not in OPEN and job.status not in ENDED:
            raise InputError(f"job {job.id} is {job.status}; it cannot take re-rolls now")
        indices = sorted({scene_index(job, number) for number in scene_numbers})
        story = Story.model_validate(job.spec)
        first = {p.scene_index: p for p in story.plan() if p.variant == 0}
        last = dict(
            session.execute(
                select(Render.scene_index, func.max(Render.variant))
                .where(Render.job_id == job.id, Render.scene_index.in_(indices))
                .group_by(Render.scene_index)
            ).all()
        )
        planned = []
        for index in indices:
            start = last.get(index, -1) + 1
            if start + variants > MAX_SCENE_VARIANTS:
                raise InputError(
                    f"scene {index + 1} of job {job.id} has {start} variants; at most "
                    f"{MAX_SCENE_VARIANTS} per scene (delete some, or pick among them)"
                )
            planned += [
                replace(first[index], variant=v, seed=secrets.randbelow(MAX_SEED + 1))
                for v in range(start, start + variants)
            ]
        hasher = RecipeHasher(story, job_people(session, job), farm.settings)
        placed = place_renders(
            session,
            job,
            planned,
            hasher,
            shard_size=farm.settings.shard_size,
            max_attempts=farm.settings.max_attempts,
        )
        job.renders_total += len(planned)
        if placed.shard_ids and job.status in ENDED:
            job.reopen()  # it runs again, for these renders; its outputs are built at the end
        tasks = [ShardTask(s, job.id, job.preset, job.priority) for s in placed.shard_ids]
    send_shards(farm, tasks)
    farm.events.publish(job_id, "job.rerolled", scenes=indices, renders=len(planned))
    return Rerolled(job_id, placed.render_ids, len(tasks))
