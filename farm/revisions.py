"""Revising a job's story: scenes added, removed or changed, the job's id and history kept, and
only what changed rendered.

A revision is a new story for the same job and the same characters. Each render of the job
whose content hash the new story still asks for stays as it is, at its (maybe new) place;
each render the new story asks for that the project has made before is reused by hash; the
rest is queued. A scene whose recipe is unchanged keeps its re-rolled variants and its pick;
renders the new story no longer asks for move to `retired_renders`, with their images, for
the history (and for reuse when a later revision asks for them again). Every revision's story
is kept in `job_revisions`, with what it cost.

A revision needs an ended job: the renders of a running one are being made from the story it
would replace (cancel it first, or wait).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.context import Farm
from farm.db.models import Job, JobRevision, Render, RetiredRender
from farm.db.retry import retried_on_lost_race
from farm.db.states import RenderStatus
from farm.errors import InputError
from farm.jobs import keep_control_images
from farm.picks import ENDED, job_in_project, request_outputs
from farm.queue.outbox import ShardTask, send_shards
from farm.render.presets import PRESETS
from farm.reuse import RecipeHasher, job_people, place_renders
from farm.story import PlannedRender, Story, parse_story

# What a revision may not change: the people are the job's, their identity tokens its renders'.
_PEOPLE_FIELDS = ("name", "class_word", "trigger", "face_crop")
SCENE_EDITS = ("change", "remove", "add")


@dataclass(frozen=True)
class Revised:
    job_id: str
    revision: int
    kept: int
    reused: int
    rendered: int
    retired: int
    shards: int
    summary: str


def revised_story(job: Job, changes: Mapping[str, Any], source: str = "revision") -> Story:
    """The job's story with `changes`, validated as a story is.

    Top-level fields replace the story's. `scenes` is either the whole new list, or edits of
    the current one by scene number (from 1): `{"change": {"3": {"prompt": ...}}, "remove":
    [5], "add": [{"prompt": ...}]}` (changed fields merge into the scene; added scenes go at
    the end). `character` and `cast`, if given, must be the job's: a revision keeps its people.
    """
    if not isinstance(changes, Mapping):
        raise InputError(f"{source}: the changes must be a mapping of story fields")
    spec = dict(job.spec)
    for key in ("character", "cast"):
        if key in changes:
            _same_people(key, spec.get(key), changes[key], source)
    data = {k: v for k, v in changes.items() if k not in ("character", "cast")}
    if isinstance(data.get("scenes"), Mapping):
        data["scenes"] = _edited_scenes(spec.get("scenes", []), data["scenes"], source)
    return parse_story({**spec, **data}, presets=PRESETS, source=source)


def _same_people(key: str, current: Any, given: Any, source: str) -> None:
    def people(value: Any) -> list[tuple[Any, ...]]:
        listed = value if isinstance(value, list) else [value] if value else []
        return [
            tuple(p.get(f) for f in _PEOPLE_FIELDS) if isinstance(p, Mapping) else (p,)
            for p in listed
        ]

    if people(current) != people(given):
        raise InputError(
            f"{source}: {key}: a revision keeps the job's characters; submit a new job for "
            "other people"
        )


def _edited_scenes(scenes: Sequence[Any], edits: Mapping[str, Any], source: str) -> list[Any]:
    unknown = sorted(set(edits) - set(SCENE_EDITS))
    if unknown:
        raise InputError(
            f"{source}: scenes: unknown edit {unknown[0]!r}; use {', '.join(SCENE_EDITS)}, or "
            "give the whole list of scenes"
        )
    result = [dict(scene) for scene in scenes]

    def index(number: Any, what: str) -> int:
        text = str(number)
        if not text.isdigit() or not 1 <= int(text) <= len(result):
            raise InputError(
                f"{source}: scenes.{what}: the story has scenes 1 to {len(result)}; there is "
                f"no scene {number!r}"
            )
        return int(text) - 1

    changes = edits.get("change", {})
    if not isinstance(changes, Mapping):
        raise InputError(f"{source}: scenes.change: a mapping of scene number to its fields")
    for number, fields in changes.items():
        if not isinstance(fields, Mapping):
            raise InputError(f"{source}: scenes.change.{number}: a mapping of scene fields")
        scene = result[index(number, "change")]
        for key, value in fields.items():
            if value is None:
                scene.pop(key, None)  # back to the story's own (seed, variants, negative)
            else:
                scene[key] = value
    removed = edits.get("remove", [])
    if not isinstance(removed, list):
        raise InputError(f"{source}: scenes.remove: a list of scene numbers")
    drop = {index(number, "remove") for number in removed}
    added = edits.get("add", [])
    if not isinstance(added, list):
        raise InputError(f"{source}: scenes.add: a list of scenes")
    return [s for i, s in enumerate(result) if i not in drop] + list(added)


@retried_on_lost_race
def revise_job(
    farm: Farm,
    job_id: str,
    story: Story,
    *,
    project_id: int | None = None,
    reuse: bool = True,
) -> Revised:
    """Make `story` the job's next revision (see the module's docstring)."""
    with farm.sessions.begin() as session:
        job = job_in_project(session, job_id, project_id, lock=True)
        if job.status not in ENDED:
            raise InputError(
                f"job {job.id} is {job.status}; revise it once it has ended (or cancel it)"
            )
        before = Story.model_validate(job.spec)
        given = story.model_dump(mode="json")
        for key in ("character", "cast"):
            _same_people(key, job.spec.get(key), given[key], "story")
        _first_revision(session, job)
        number = job.revision + 1
        hasher = RecipeHasher(story, job_people(session, job), farm.settings)
        plan = story.plan()
        rows = list(
            session.scalars(
                select(Render)
                .where(Render.job_id == job.id)
                .order_by(Render.scene_index, Render.variant)
            )
        )
        places, new = _keep(plan, rows, hasher)
        retire = [row for row in rows if row.id not in places]
        _retire(session, retire, number)
        _move(session, rows, places)
        job.revision = number
        # The people as the job has them (its photos' names, not a story file's paths).
        job.spec = {**given, "character": job.spec["character"], "cast": job.spec.get("cast", [])}
        keep_control_images(session, job.id, story)
        job.preset = story.preset
        placed = place_renders(
            session,
            job,
            new,
            hasher,
            shard_size=farm.settings.shard_size,
            max_attempts=farm.settings.max_attempts,
            reuse=reuse,
        )
        job.renders_total = len(places) + len(new)
        summary = describe_changes(before, story)
        session.add(
            JobRevision(
                job_id=job.id,
                number=number,
                spec=job.spec,
                summary=summary,
                kept=len(places),
                reused=placed.reused,
                rendered=placed.rendered,
                retired=len(retire),
            )
        )
        if placed.shard_ids:
            job.reopen()  # it runs again for the new renders, and builds its outputs at the end
        tasks = [ShardTask(s, job.id, job.preset, job.priority) for s in placed.shard_ids]
        revised = Revised(
            job.id,
            number,
            len(places),
            placed.reused,
            placed.rendered,
            len(retire),
            len(tasks),
            summary,
        )
    send_shards(farm, tasks)
    farm.events.publish(job_id, "job.revised", revision=number, renders=revised.rendered)
    if not tasks:  # nothing to render: the outputs follow the new story now
        request_outputs(farm, job_id)
    return revised


def history(session: Session, job_id: str) -> list[JobRevision]:
    """The job's revisions, newest first."""
    return list(
        session.scalars(
            select(JobRevision)
            .where(JobRevision.job_id == job_id)
            .order_by(JobRevision.number.desc())
        )
    )


def _first_revision(session: Session, job: Job) -> None:
    """Revision 1 as a row, for a job submitted before revisions were recorded with it."""
    exists = session.scalar(
        select(JobRevision.id).where(JobRevision.job_id == job.id, JobRevision.number == 1)
    )
    if exists is None and job.revision == 1:
        session.add(JobRevision(job_id=job.id, number=1, spec=job.spec, summary="submitted"))


def _keep(
    plan: Sequence[PlannedRender], rows: Sequence[Render], hasher: RecipeHasher
) -> tuple[dict[int, tuple[int, int, str | None]], list[PlannedRender]]:
    """Which finished rows the new plan keeps, at which (scene, variant, caption), and the
    planned renders no row holds. A kept scene brings along its other finished variants (its
    re-rolls) while its recipe is the same, numbered after the planned ones."""
    finished = [r for r in rows if r.status is RenderStatus.DONE and r.content_hash]
    by_hash: dict[str, list[Render]] = {}
    for row in finished:
        by_hash.setdefault(row.content_hash or "", []).append(row)
    places: dict[int, tuple[int, int, str | None]] = {}
    new: list[PlannedRender] = []
    came_from: dict[int, set[int]] = {}  # new scene -> the old scenes its renders were in
    scene_hash: dict[int, str] = {}
    variants: dict[int, int] = {}
    for planned in plan:
        scene_hash.setdefault(planned.scene_index, hasher.scene(planned))
        variants[planned.scene_index] = max(
            variants.get(planned.scene_index, 0), planned.variant + 1
        )
        free = [r for r in by_hash.get(hasher.content(planned), []) if r.id not in places]
        if not free:
            new.append(planned)
            continue
        row = free[0]
        places[row.id] = (planned.scene_index, planned.variant, planned.caption)
        came_from.setdefault(planned.scene_index, set()).add(row.scene_index)
    captions = {p.scene_index: p.caption for p in plan}
    for scene, olds in came_from.items():
        extras = [
            r
            for r in finished
            if r.id not in places and r.scene_index in olds and r.scene_hash == scene_hash[scene]
        ]
        for offset, row in enumerate(sorted(extras, key=lambda r: (r.scene_index, r.variant))):
            places[row.id] = (scene, variants[scene] + offset, captions[scene])
    return places, new


def _retire(session: Session, rows: Sequence[Render], number: int) -> None:
    """Finished renders go to `retired_renders` with their images; the others (failed, never
    made) have nothing to keep."""
    for row in rows:
        if row.status is RenderStatus.DONE and row.storage_key is not None:
            session.add(
                RetiredRender(
                    job_id=row.job_id,
                    revision=row.revision,
                    retired_in=number,
                    scene_index=row.scene_index,
                    variant=row.variant,
                    seed=row.seed,
                    prompt=row.prompt,
                    negative=row.negative,
                    caption=row.caption,
                    content_hash=row.content_hash,
                    storage_key=row.storage_key,
                    thumb_key=row.thumb_key,
                    face_similarity=row.face_similarity,
                    qc_seed=row.qc_seed,
                )
            )
        session.delete(row)
    session.flush()


def _move(
    session: Session, rows: Sequence[Render], places: Mapping[int, tuple[int, int, str | None]]
) -> None:
    """Kept rows to their new places, through places no row holds (each row's negative id):
    (job, scene, variant) is unique at every statement, not only at the end."""
    kept = [row for row in rows if row.id in places]
    moving = [r for r in kept if (r.scene_index, r.variant) != places[r.id][:2]]
    for row in moving:
        row.scene_index, row.variant = -row.id, 0
    session.flush()
    for row in kept:
        row.scene_index, row.variant, row.caption = places[row.id]
    session.flush()
    # One pick per scene: two kept scenes that became one keep the first pick.
    picked: set[int] = set()
    for row in sorted(kept, key=lambda r: (r.scene_index, r.variant)):
        if row.picked and row.scene_index in picked:
            row.picked = False
        elif row.picked:
            picked.add(row.scene_index)


def describe_changes(before: Story, after: Story) -> str:
    """What a revision changed, in a line a person reads: scenes numbered from 1."""
    notes = []
    old, new = before.model_dump(), after.model_dump()
    for key in sorted(set(old) | set(new)):
        if key not in ("scenes", "character", "cast") and old.get(key) != new.get(key):
            notes.append(f"{key} {old.get(key)!r} -> {new.get(key)!r}")
    old_scenes, new_scenes = old["scenes"], new["scenes"]
    for number, (a, b) in enumerate(zip(old_scenes, new_scenes, strict=False), start=1):
        changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if changed:
            notes.append(f"scene {number}: {', '.join(changed)} changed")
    if len(new_scenes) > len(old_scenes):
        first, last = len(old_scenes) + 1, len(new_scenes)
        notes.append(f"scene {first} added" if first == last else f"scenes {first}-{last} added")
    elif len(old_scenes) > len(new_scenes):
        first, last = len(new_scenes) + 1, len(old_scenes)
        notes.append(
            f"scene {first} removed" if first == last else f"scenes {first}-{last} removed"
        )
    return "; ".join(notes) or "no change"
