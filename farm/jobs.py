"""Jobs: a story planned into renders and shards in one transaction, then sent to the queue of
its preset; cancelling, retrying and reading progress.

Tasks are sent only after the transaction commits (a worker must find the rows it is told
about), and they carry ids, never objects: the worker re-reads the world.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from celery import Celery
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from farm.characters import create_character
from farm.context import Farm
from farm.db.models import CastMember, Job, Render, Shard, project_or_default
from farm.db.queries import job_progress
from farm.db.retry import retried_on_lost_race
from farm.db.states import JobStatus, RenderStatus, ShardStatus
from farm.errors import InputError
from farm.identity.engine import Photo
from farm.identity.faces import FaceAnalyzer
from farm.queue.app import MAX_PRIORITY, RENDER_SHARD, render_queue
from farm.render.presets import get_preset
from farm.story import Character as StoryCharacter
from farm.story import PlannedRender, Story


def render_key(job_id: str, scene_index: int, variant: int) -> str:
    """Deterministic: re-running a shard overwrites the same objects, never adds copies."""
    return f"jobs/{job_id}/renders/{scene_index:04d}-v{variant}.png"


def thumb_key(job_id: str, scene_index: int, variant: int) -> str:
    return f"jobs/{job_id}/thumbs/{scene_index:04d}-v{variant}.webp"


def shard_plan(plan: Sequence[PlannedRender], size: int) -> list[Sequence[PlannedRender]]:
    """Consecutive renders, `size` at a time: scenes next to each other share a batch."""
    return [plan[i : i + size] for i in range(0, len(plan), size)]


def send_shards(
    celery: Celery, preset: str, shard_ids: Sequence[int], priority: int, *, job_id: str
) -> None:
    for shard_id in shard_ids:
        celery.send_task(
            RENDER_SHARD,
            args=[shard_id],
            queue=render_queue(preset),
            # Celery on Redis serves priority 0 first; the farm's 9 is the most urgent.
            priority=MAX_PRIORITY - priority,
            # What Flower, `celery events` and the worker's log show instead of "[12]".
            argsrepr=shard_task_repr(shard_id, job_id, preset, priority),
        )


def shard_task_repr(shard_id: int, job_id: str, preset: str, priority: int) -> str:
    return f"shard {shard_id} of job {job_id} ({preset}, priority {priority})"


@dataclass(frozen=True)
class Submitted:
    job_id: str
    renders: int
    shards: int


def check_submission(story: Story, priority: int) -> None:
    """Refuse what a job cannot be, before anything (a row, a stored photo) is written."""
    if not 0 <= priority <= MAX_PRIORITY:
        raise InputError(f"priority must be between 0 and {MAX_PRIORITY}, got {priority}")
    get_preset(story.preset)


def plan_job(
    session: Session,
    story: Story,
    character_id: int,
    *,
    shard_size: int,
    max_attempts: int,
    priority: int = 5,
    webhook_url: str | None = None,
    project_id: int | None = None,
) -> Job:
    """The job, its shards and renders, added to `session` (the caller commits)."""
    check_submission(story, priority)
    plan = story.plan()
    job = Job(
        character_id=character_id,
        preset=story.preset,
        priority=priority,
        spec=story.model_dump(mode="json"),
        renders_total=len(plan),
        webhook_url=webhook_url,
        project_id=project_or_default(project_id),
    )
    session.add(job)
    session.flush()
    for index, group in enumerate(shard_plan(plan, shard_size)):
        shard = Shard(job_id=job.id, index=index, max_attempts=max_attempts)
        session.add(shard)
        session.flush()
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
            for p in group
        )
    return job


def submit_story(
    farm: Farm,
    story: Story,
    photos: Sequence[Photo],
    faces: FaceAnalyzer,
    *,
    priority: int = 5,
    webhook_url: str | None = None,
    project_id: int | None = None,
    cast_photos: Mapping[str, Sequence[Photo]] | None = None,
) -> Submitted:
    """Plan and queue `story`. `photos` are the main character's; `cast_photos` maps the
    trigger of each other member of the story's cast to that character's photos."""
    settings = farm.settings
    check_submission(story, priority)  # before create_character stores the photos
    cast_photos = cast_photos or {}
    missing = [p.trigger for p in story.cast if p.trigger not in cast_photos]
    if missing:
        raise InputError(f"no photos given for the cast member(s) with trigger {missing}")
    with farm.sessions.begin() as session:

        def character_of(person: StoryCharacter, its_photos: Sequence[Photo]) -> int:
            return create_character(
                session,
                farm.storage,
                faces,
                name=person.name,
                class_word=person.class_word,
                trigger=person.trigger,
                photos=its_photos,
                face_crop=person.face_crop,
                project_id=project_id,
            ).id

        main_id = character_of(story.character, photos)
        cast_ids = [character_of(p, cast_photos[p.trigger]) for p in story.cast]
        job = plan_job(
            session,
            story,
            main_id,
            shard_size=settings.shard_size,
            max_attempts=settings.max_attempts,
            priority=priority,
            webhook_url=webhook_url,
            project_id=project_id,
        )
        session.add_all(
            CastMember(job_id=job.id, character_id=cid, trigger=person.trigger, position=i)
            for i, (person, cid) in enumerate(zip(story.cast, cast_ids, strict=True))
        )
        shard_ids = list(session.scalars(select(Shard.id).where(Shard.job_id == job.id)))
        submitted = Submitted(job.id, job.renders_total, len(shard_ids))
    send_shards(farm.celery, story.preset, shard_ids, priority, job_id=submitted.job_id)
    farm.events.publish(submitted.job_id, "job.submitted", renders=submitted.renders)
    return submitted


def get_job(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise InputError(f"no job {job_id!r}")
    return job


@retried_on_lost_race
def cancel_job(farm: Farm, job_id: str) -> Job:
    """Queued shards end cancelled at once; a running shard stops at its next render."""
    with farm.sessions.begin() as session:
        job = get_job(session, job_id)
        if job.status not in (JobStatus.QUEUED, JobStatus.RUNNING):
            raise InputError(f"job {job_id} is {job.status}; only queued or running jobs cancel")
        job.request_cancel()
        queued = list(
            session.scalars(
                select(Shard).where(Shard.job_id == job_id, Shard.status == ShardStatus.QUEUED)
            )
        )
        for shard in queued:
            shard.cancel()
        session.execute(
            update(Render)
            .where(
                Render.shard_id.in_([s.id for s in queued]), Render.status == RenderStatus.QUEUED
            )
            .values(status=RenderStatus.CANCELLED)
        )
        running = session.scalar(
            select(Shard.id).where(Shard.job_id == job_id, Shard.status == ShardStatus.RUNNING)
        )
        if running is None:
            job.cancel()
    farm.events.publish(job_id, "job.cancel_requested")
    return job


@retried_on_lost_race
def retry_job(farm: Farm, job_id: str) -> int:
    """Send the failed (and cancelled) shards of a finished job again; returns how many."""
    with farm.sessions.begin() as session:
        job = get_job(session, job_id)
        if job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
            raise InputError(f"job {job_id} is still {job.status}; retry it once it has ended")
        shards = list(
            session.scalars(
                select(Shard).where(
                    Shard.job_id == job_id,
                    Shard.status.in_([ShardStatus.FAILED, ShardStatus.CANCELLED]),
                )
            )
        )
        if not shards:
            raise InputError(f"job {job_id} has no failed or cancelled shards to retry")
        for shard in shards:
            shard.reopen()
        session.execute(
            update(Render)
            .where(
                Render.shard_id.in_([s.id for s in shards]),
                Render.status.in_([RenderStatus.FAILED, RenderStatus.CANCELLED]),
            )
            .values(status=RenderStatus.QUEUED, error=None)
        )
        job.reopen()
        ids, preset, priority = [s.id for s in shards], job.preset, job.priority
    send_shards(farm.celery, preset, ids, priority, job_id=job_id)
    farm.events.publish(job_id, "job.retried", shards=len(ids))
    return len(ids)


@dataclass(frozen=True)
class JobProgress:
    job_id: str
    status: JobStatus
    total: int
    counts: dict[RenderStatus, int]

    @property
    def done(self) -> int:
        return self.counts[RenderStatus.DONE]

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


def progress(session: Session, job_id: str) -> JobProgress:
    job = get_job(session, job_id)
    return JobProgress(job.id, job.status, job.renders_total, job_progress(session, job_id))
