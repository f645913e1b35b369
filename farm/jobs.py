"""Jobs: a story planned into renders and shards in one transaction, then sent to the queue of
its preset; reading progress. Cancelling, retrying and every other change of a job's state are
farm/lifecycle.py's.

Tasks are sent only after the transaction commits (a worker must find the rows it is told
about), and they carry ids, never objects: the worker re-reads the world. The shards are
committed unsent, so a broker that is down at that moment delays the job, never loses it
(farm/queue/outbox.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.characters import create_character
from farm.context import Farm
from farm.controls import control_key, stored_shas
from farm.db.models import (
    CastMember,
    Character,
    Job,
    JobControlImage,
    JobRevision,
    project_or_default,
)
from farm.db.queries import job_progress
from farm.db.states import JobStatus, RenderStatus
from farm.db.types import utcnow
from farm.errors import InputError
from farm.identity.faces import FaceAnalyzer
from farm.identity.photos import Photo
from farm.job_names import default_name
from farm.lifecycle import announce_job_end, get_job
from farm.preview import preview_story
from farm.queue.app import MAX_PRIORITY
from farm.queue.outbox import ShardTask, send_shards
from farm.recipe import render_stem
from farm.render.presets import get_preset
from farm.reuse import Placed, RecipeHasher, job_people, place_renders
from farm.scheduling import rejoin
from farm.settings import Settings
from farm.story import Character as StoryCharacter
from farm.story import Story


def render_key(job_id: str, scene_index: int, variant: int, revision: int = 1) -> str:
    """Deterministic: re-running a shard overwrites the same objects, never adds copies. A
    render made for a later revision of the story (farm/revisions.py) is named apart (`-r2`):
    its place may be an earlier revision's, whose image the job's history keeps."""
    return f"jobs/{job_id}/renders/{render_stem(scene_index, variant)}{_of(revision)}.png"


def thumb_key(job_id: str, scene_index: int, variant: int, revision: int = 1) -> str:
    return f"jobs/{job_id}/thumbs/{render_stem(scene_index, variant)}{_of(revision)}.webp"


def _of(revision: int) -> str:
    return "" if revision == 1 else f"-r{revision}"


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
    settings: Settings,
    *,
    cast: Mapping[str, int] | None = None,
    priority: int = 5,
    webhook_url: str | None = None,
    project_id: int | None = None,
    preview_of: str | None = None,
    reuse: bool = True,
) -> tuple[Job, Placed]:
    """The job, its cast (trigger -> character id), shards and renders, added to `session`
    (the caller commits), and where its renders went. Renders the project has made before are
    finished at once from their images (unless `reuse` is off); a job left with nothing to
    render has succeeded, and the caller announces its end once committed. A story submitted
    for approval makes a job awaiting it, without shards: its preview, a job of its own
    (`preview_of`), renders first."""
    check_submission(story, priority)
    awaiting = story.approval == "preview"
    character = session.get_one(Character, character_id)
    planned = story.plan()
    job = Job(
        name=default_name(story.title, character.name, utcnow()),
        character_id=character_id,
        preset=story.preset,
        priority=priority,
        spec=story.model_dump(mode="json"),
        renders_total=len(planned),
        webhook_url=webhook_url,
        project_id=project_or_default(project_id),
        status=JobStatus.AWAITING_APPROVAL if awaiting else JobStatus.QUEUED,
        preview_of=preview_of,
    )
    rejoin(session, project_id)  # before the job counts as its project's waiting work
    session.add(job)
    session.flush()
    keep_control_images(session, job.id, story)
    _add_cast(session, job.id, story, cast or {})
    placed = place_renders(
        session,
        job,
        [] if awaiting else planned,
        RecipeHasher(story, job_people(session, job), settings),
        shard_size=settings.shard_size,
        max_attempts=settings.max_attempts,
        reuse=reuse,
    )
    session.add(
        JobRevision(
            job_id=job.id,
            number=1,
            spec=job.spec,
            summary="submitted",
            reused=placed.reused,
            rendered=placed.rendered,
        )
    )
    if job.status is JobStatus.QUEUED and planned and not placed.rendered:
        job.start()
        job.succeed()
        job.finalize_pending = True  # announced by the caller after commit, else by the reaper
    return job, placed


def submit_story(
    farm: Farm,
    story: Story,
    character_id: int,
    *,
    cast: Mapping[str, int] | None = None,
    priority: int = 5,
    webhook_url: str | None = None,
    project_id: int | None = None,
) -> Submitted:
    """Plan and queue `story` for the project's character `character_id`; `cast` maps the
    trigger of each other member of the story's cast to that character's id.

    Characters are made first (`submit_with_photos`, or the dashboard's character pages): a
    submit reads ids, so it never downloads or hashes photos on the request thread.
    """
    check_submission(story, priority)
    with farm.sessions.begin() as session:
        submitted, tasks = _add_job(
            session, farm, story, character_id, cast or {}, priority, webhook_url, project_id
        )
    return _sent(farm, submitted, tasks)


def submit_with_photos(
    farm: Farm,
    story: Story,
    photos: Sequence[Photo],
    faces: FaceAnalyzer,
    *,
    cast_photos: Mapping[str, Sequence[Photo]] | None = None,
    priority: int = 5,
    webhook_url: str | None = None,
    project_id: int | None = None,
) -> Submitted:
    """`farm submit`'s way in: the story's characters made from their photos (or found, when
    the same photos made them before), and the job, in one transaction, so that a bad story or
    a photo without a face leaves nothing behind. `cast_photos` maps the trigger of each other
    member of the cast to that character's photos."""
    check_submission(story, priority)
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
        cast = {p.trigger: character_of(p, cast_photos[p.trigger]) for p in story.cast}
        submitted, tasks = _add_job(
            session, farm, story, main_id, cast, priority, webhook_url, project_id
        )
    return _sent(farm, submitted, tasks)


def _add_job(
    session: Session,
    farm: Farm,
    story: Story,
    character_id: int,
    cast: Mapping[str, int],
    priority: int,
    webhook_url: str | None,
    project_id: int | None,
) -> tuple[Submitted, list[ShardTask]]:
    """The job of `story` and its cast, added to `session` (the caller commits); the job and
    the tasks of its shards (its preview's, when it awaits approval), sent once the
    transaction has committed."""
    missing = [p.trigger for p in story.cast if p.trigger not in cast]
    if missing:
        raise InputError(f"no character given for the cast member(s) with trigger {missing}")
    character = _project_character(session, character_id, project_id)
    if character.trigger != story.character.trigger:  # workers read the row's trigger
        raise InputError(
            f"character {character_id} ({character.name}) answers to trigger "
            f"{character.trigger!r}, but the story names {story.character.trigger!r}"
        )
    for person in story.cast:  # a cast member's trigger is the job's (cast_members.trigger)
        _project_character(session, cast[person.trigger], project_id)
    job, placed = plan_job(
        session,
        story,
        character_id,
        farm.settings,
        cast=cast,
        priority=priority,
        webhook_url=webhook_url,
        project_id=project_id,
    )
    queued = job
    if story.approval == "preview":
        # Always rendered (hashed only for its re-rolls and picks), so that it holds shards
        # and the job it previews never reads as ended at submission.
        queued, placed = plan_job(
            session,
            preview_story(story),
            character_id,
            farm.settings,
            cast=cast,
            priority=priority,
            project_id=project_id,
            preview_of=job.id,
            reuse=False,
        )
        queued.name = f"{job.name} (preview)"
    shard_ids = placed.shard_ids
    tasks = [ShardTask(s, queued.id, queued.preset, priority) for s in shard_ids]
    return Submitted(job.id, job.renders_total, len(shard_ids)), tasks


def _add_cast(session: Session, job_id: str, story: Story, cast: Mapping[str, int]) -> None:
    session.add_all(
        CastMember(
            job_id=job_id, character_id=cast[person.trigger], trigger=person.trigger, position=i
        )
        for i, person in enumerate(story.cast)
    )


def _sent(farm: Farm, submitted: Submitted, tasks: list[ShardTask]) -> Submitted:
    # The shards were committed unsent: a broker that is down now leaves them to the reaper.
    send_shards(farm, tasks)
    farm.events.publish(submitted.job_id, "job.submitted", renders=submitted.renders)
    if submitted.renders and not submitted.shards:  # every render reused: it has ended
        announce_job_end(farm, submitted.job_id, JobStatus.SUCCEEDED)
    return submitted


def _project_character(session: Session, character_id: int, project_id: int | None) -> Character:
    """The character, if it exists in the job's project: a job must never render one
    project's face in another's story."""
    character = session.scalar(
        select(Character).where(
            Character.id == character_id,
            Character.project_id == project_or_default(project_id),
            Character.deleted.is_(None),
        )
    )
    if character is None:
        raise InputError(f"no character {character_id} in this project")
    return character


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


def keep_control_images(session: Session, job_id: str, story: Story) -> None:
    """A `job_control_images` row for each stored image `story` names that the job has none
    for yet: what keeps the image from `farm gc` while the job (or a later revision of it) may
    read it."""
    shas = stored_shas(story)
    if not shas:  # most stories: no query
        return
    linked = set(
        session.scalars(select(JobControlImage.sha256).where(JobControlImage.job_id == job_id))
    )
    session.add_all(
        JobControlImage(job_id=job_id, sha256=sha, storage_key=control_key(sha))
        for sha in shas
        if sha not in linked
    )
