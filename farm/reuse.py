"""Renders placed in a job: found by content hash where the project has made those pixels
before, rendered (in new shards) where it has not.

Every way renders enter a job goes through `place_renders`: a submission, a revision of the
story, a re-roll. A studio that resubmits a 40-scene story with two prompts changed gets two
renders queued and 38 rows that point at the images it already has: a reused render is a row
of its own (its own scene, variant, caption and pick) whose storage key names the object the
first render wrote, so no pixel is copied. Reuse stays within the project: another team's
renders are invisible to it, as are their jobs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, inspect, select
from sqlalchemy.orm import Session

from farm.db.models import CastMember, Character, Job, Render, RetiredRender, Shard
from farm.db.states import RenderStatus
from farm.recipe import RenderSettings
from farm.render.presets import get_preset
from farm.render_hash import (
    DEFAULT_SCHEDULER,
    Lora,
    Person,
    model_files,
    photos_identity,
    render_hash,
)
from farm.settings import Settings
from farm.story import PlannedRender, Story


def person(character: Character, trigger: str) -> Person:
    """A character as a render's pixels see it (its photos are loaded with it)."""
    photos = [photo.sha256 for photo in character.photos]
    return Person(trigger, character.class_word, photos_identity(photos, character.face_crop))


def job_people(session: Session, job: Job) -> list[Person]:
    """The job's character and cast, with the triggers its prompts use for them."""
    main = session.get_one(Character, job.character_id)
    people = [person(main, main.trigger)]
    members = session.scalars(
        select(CastMember).where(CastMember.job_id == job.id).order_by(CastMember.position)
    )
    for member in members:
        people.append(person(session.get_one(Character, member.character_id), member.trigger))
    return people


class RecipeHasher:
    """The content hash of each render of one story, for its people, under the farm's settings
    (where its starting noise is drawn and how long prompts are cut decide pixels too)."""

    def __init__(self, story: Story, people: Sequence[Person], settings: Settings) -> None:
        self.settings = settings
        recipe = RenderSettings.of(story)
        preset = get_preset(story.preset)
        fast = preset.fast
        qc = None
        if story.min_face_similarity is not None:
            qc = {"min_face_similarity": story.min_face_similarity, "retries": story.qc_retries}
        self._common = {
            "preset": preset.name,
            "model_files": model_files(preset, settings.sdxl_base),
            "people": list(people),
            "width": recipe.width,
            "height": recipe.height,
            "steps": recipe.steps,
            "guidance": recipe.guidance,
            "style_strength": recipe.style_strength,
            "scheduler": str(fast.scheduler) if fast else DEFAULT_SCHEDULER,
            "loras": [Lora(f"{fast.repo}/{fast.file}", fast.weight)] if fast else [],
            "qc": qc,
            "noise": None if settings.noise == "cpu" else settings.noise,
            "prompt_truncation": (
                None if settings.prompt_truncation == "reference" else settings.prompt_truncation
            ),
        }

        # Consistent attention (issue 16) makes a render's pixels depend on other scenes': its
        # settings, and in story mode the recipes of the reference scenes every render attends
        # to. (In batch mode the batch's other renders count too, which no hash can promise.)
        self._consistency = None
        document = story.consistency.document()
        if document is not None and story.consistency.mode == "story":
            wanted = story.consistency.reference_indices(len(story.scenes))
            first = {p.scene_index: p for p in story.plan() if p.variant == 0}
            document["references"] = [self.content(first[i]) for i in wanted if i in first]
        self._consistency = document

    def content(self, planned: PlannedRender) -> str:
        """Everything that decides this render's pixels."""
        return self._hash(planned, planned.seed)

    def scene(self, planned: PlannedRender) -> str:
        """The scene's recipe, the same for all its variants: what a re-rolled variant shares
        with the scene it belongs to, so that a revision that leaves the scene as it was
        keeps its re-rolls and its pick."""
        return self._hash(planned, None)

    def _hash(self, planned: PlannedRender, seed: int | None) -> str:
        extra: dict[str, object] = {"consistency": self._consistency}
        if planned.control is not None:  # its map by content hash, its type and its scale
            extra["control"] = planned.control.recipe()
        if planned.dressing:  # its outfits' and location's reference images, by content
            extra["dressing"] = [part.recipe() for part in planned.dressing]
        return render_hash(
            **self._common,
            prompt=planned.prompt,
            negative=planned.negative,
            seed=seed,
            extra=extra,
        )


@dataclass(frozen=True)
class Finished:
    """A finished image the project has, wherever its row is now."""

    job_id: str
    storage_key: str
    thumb_key: str | None
    face_similarity: float | None
    qc_seed: int | None


def finished_by_hash(
    session: Session, project_id: int, hashes: Iterable[str]
) -> dict[str, Finished]:
    """One finished image per content hash among `hashes`, from the project's renders, current
    or retired by a revision; the oldest, so that every job reuses the same object."""
    wanted = sorted(set(hashes))
    found: dict[str, Finished] = {}
    for start in range(0, len(wanted), 500):  # well under every database's parameter limit
        page = wanted[start : start + 500]
        for table, done in (
            (Render, Render.status == RenderStatus.DONE),
            (RetiredRender, RetiredRender.id.is_not(None)),
        ):
            rows = session.execute(
                select(
                    table.content_hash,
                    table.job_id,
                    table.storage_key,
                    table.thumb_key,
                    table.face_similarity,
                    table.qc_seed,
                )
                .join(Job, Job.id == table.job_id)
                .where(
                    table.content_hash.in_(page),
                    table.storage_key.is_not(None),
                    done,
                    Job.project_id == project_id,
                )
                .order_by(table.created, table.id)
            )
            for content_hash, *source in rows:
                found.setdefault(content_hash, Finished(*source))
    return found


@dataclass(frozen=True)
class Placed:
    """What placing renders in a job came to."""

    reused: int
    rendered: int
    shard_ids: list[int]
    render_ids: list[int]  # in the order of the renders placed


def place_renders(
    session: Session,
    job: Job,
    planned: Sequence[PlannedRender],
    hasher: RecipeHasher,
    *,
    shard_size: int,
    max_attempts: int,
    reuse: bool = True,
) -> Placed:
    """Add a row for each of `planned` to `job` (flushed, not committed): finished at once
    where the project has the image (unless `reuse` is off), else queued in new shards of
    `shard_size`, numbered after the job's existing ones.

    Rows go in as a few multi-row INSERTs, not as ORM objects: a 10,000-scene story is then
    a fraction of a second of SQL, where a flush of 10,000 objects reading back their keys and
    timestamps took seconds. The session holds none of them; ask SQL for what it needs."""
    hashes = [(hasher.content(p), hasher.scene(p)) for p in planned]
    reuse = reuse and hasher.settings.reuse_renders
    found = finished_by_hash(session, job.project_id, (h for h, _ in hashes)) if reuse else {}
    fresh: list[dict[str, Any]] = []
    reused: list[dict[str, Any]] = []
    for plan, (content_hash, scene_hash) in zip(planned, hashes, strict=True):
        values = {
            "job_id": job.id,
            "scene_index": plan.scene_index,
            "variant": plan.variant,
            "seed": plan.seed,
            "prompt": plan.prompt,
            "negative": plan.negative,
            "caption": plan.caption,
            "content_hash": content_hash,
            "scene_hash": scene_hash,
            "revision": job.revision,
            "status": RenderStatus.QUEUED,
        }
        source = found.get(content_hash)
        if source is None:
            fresh.append(values)
        else:
            reused.append(_finished_from(values, source))
    shard_ids = _new_shards(session, job, -(-len(fresh) // shard_size), max_attempts)
    for shard_id, offset in zip(shard_ids, range(0, len(fresh), shard_size), strict=True):
        for values in fresh[offset : offset + shard_size]:
            values["shard_id"] = shard_id
    session.flush()  # what the session holds first: a revision's moved and retired rows
    for rows in (fresh, reused):  # two statements: executemany takes one set of columns
        if rows:
            session.execute(insert(Render), rows)
    ids = {
        (scene, variant): render_id
        for scene, variant, render_id in session.execute(
            select(Render.scene_index, Render.variant, Render.id).where(Render.job_id == job.id)
        )
    }
    return Placed(
        len(reused),
        len(fresh),
        shard_ids,
        [ids[p.scene_index, p.variant] for p in planned],
    )


def _new_shards(session: Session, job: Job, count: int, max_attempts: int) -> list[int]:
    """`count` queued shards numbered after the job's existing ones; their ids in order."""
    if not count:
        return []
    start = session.scalar(
        select(func.coalesce(func.max(Shard.index) + 1, 0)).where(Shard.job_id == job.id)
    )
    rows = [
        {"job_id": job.id, "index": start + i, "max_attempts": max_attempts} for i in range(count)
    ]
    return list(
        session.scalars(insert(Shard).returning(Shard.id, sort_by_parameter_order=True), rows)
    )


def _finished_from(values: dict[str, Any], source: Finished) -> dict[str, Any]:
    """The row of `values` finished with `source`'s image, by the render's own reuse move."""
    row = Render(**values)
    row.reuse(
        source.storage_key,
        source.thumb_key,
        source_job=source.job_id,
        face_similarity=source.face_similarity,
        qc_seed=source.qc_seed,
    )
    columns = Render.__table__.columns.keys()
    return {key: value for key, value in inspect(row).dict.items() if key in columns}
