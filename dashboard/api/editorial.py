"""The editorial loop in the API: re-roll scenes, pick variants, revise a job's story, read its
revisions and picks, rebuild its comic. The same service functions as the dashboard's pages
and the CLI (farm/rerolls.py, farm/picks.py, farm/revisions.py). Scenes are numbered from 1,
variants as their files name them (`v0`, `v1`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import abort
from pydantic import BaseModel, ConfigDict, Field

from dashboard.api import api, operation
from dashboard.context import farm
from dashboard.scope import job_of
from dashboard.security import principal
from farm.comic.job import built_picks, picks_document
from farm.controls import submitted_story
from farm.db.models import Role
from farm.errors import InputError
from farm.picks import ENDED, pick_variant, request_outputs, scene_picks
from farm.rerolls import MAX_SCENE_VARIANTS, reroll
from farm.revisions import history, revise_job, revised_story
from farm.story import MAX_SCENES, MAX_VARIANTS


class RerollRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Checked by the service, after the job is found: another project's job is a 404 whatever
    # the body says.
    scenes: list[int] = Field(
        default_factory=list,
        max_length=MAX_SCENES,
        description="The scenes to re-roll, numbered from 1 (at least one).",
    )
    variants: int = Field(
        default=1, ge=1, le=MAX_VARIANTS, description="New variants per scene, each a new seed."
    )


class RerolledOut(BaseModel):
    renders: list[int] = Field(description="The ids of the new renders, queued.")
    shards: int


class PickRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Required, but checked once the job is found (see RerollRequest).
    scene: int | None = Field(
        default=None, ge=1, le=MAX_SCENES, description="The scene, numbered from 1 (required)."
    )
    variant: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SCENE_VARIANTS,
        description="As its file names it: v0 is 0 (required).",
    )


class PickOut(BaseModel):
    scene: int = Field(description="Numbered from 1.")
    variant: int
    render_id: int
    reason: str = Field(description="picked (by a person), best face, or first.")


class PicksOut(BaseModel):
    items: list[PickOut] = Field(description="Each scene's pick now.")
    comic: list[PickOut] | None = Field(
        description="The picks the comic in storage was built from; null before any comic."
    )
    comic_current: bool = Field(description="Whether the comic shows the picks of now.")


class SceneEdits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    change: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Scene number (from 1) to the fields that change (prompt, caption, seed, "
        "negative, variants, wide); null sets a field back to the story's own.",
    )
    remove: list[int] = Field(default_factory=list, description="Scene numbers to remove.")
    add: list[dict[str, Any]] = Field(
        default_factory=list, description="Scenes to add, at the end."
    )


class StoryChanges(BaseModel):
    """Story fields that replace the job's (style, steps, seed, ...); `scenes` is the whole new
    list, or edits of the current one. The characters stay the job's."""

    model_config = ConfigDict(extra="allow")

    scenes: list[dict[str, Any]] | SceneEdits | None = None


class RevisionOut(BaseModel):
    number: int
    summary: str = Field(description="What changed, scenes numbered from 1.")
    kept: int = Field(description="Renders kept from the revision before.")
    reused: int = Field(description="Renders found by content hash elsewhere in the project.")
    rendered: int = Field(description="Renders queued.")
    retired: int = Field(description="Renders of the revision before that this one dropped.")
    created: datetime
    story: dict[str, Any]


class RevisedOut(BaseModel):
    revision: int
    summary: str
    kept: int
    reused: int
    rendered: int
    retired: int
    shards: int


class RevisionPage(BaseModel):
    current: int
    items: list[RevisionOut]


class RebuildOut(BaseModel):
    queued: bool = Field(description="Whether the broker took the rebuild task.")


@api.post("/jobs/<uuid:job_id>/reroll")
@operation("jobs", role=Role.ARTIST, status=202, response=RerolledOut, body=RerollRequest)
def reroll_scenes(job_id: Any, body: RerollRequest) -> RerolledOut:
    """Queue new variants of scenes, with new seeds, at the job's priority; the old variants
    stay. An ended job runs again for them, and builds its comic again at the end."""
    with farm().sessions() as session:
        job = job_of(session, principal(), str(job_id))
    done = reroll(
        farm(), job.id, body.scenes, variants=body.variants, project_id=principal().project_id
    )
    return RerolledOut(renders=done.render_ids, shards=done.shards)


@api.post("/jobs/<uuid:job_id>/pick")
@operation("jobs", role=Role.ARTIST, response=PickOut, body=PickRequest)
def pick(job_id: Any, body: PickRequest) -> PickOut:
    """Pick the variant a scene's comic panel shows; an ended job's comic, PDF, CBZ and zip
    are built again with it."""
    with farm().sessions() as session:
        job = job_of(session, principal(), str(job_id))
    if body.scene is None or body.variant is None:
        raise InputError("body: scene (from 1) and variant (v0 is 0) are both required")
    chosen = pick_variant(
        farm(), job.id, body.scene, body.variant, project_id=principal().project_id
    )
    return PickOut(
        scene=body.scene, variant=body.variant, render_id=chosen.render.id, reason=chosen.reason
    )


@api.get("/jobs/<uuid:job_id>/picks")
@operation("jobs", response=PicksOut)
def picks(job_id: Any) -> PicksOut:
    """Each scene's pick now, and the picks the comic in storage was built from."""
    with farm().sessions() as session:
        job = job_of(session, principal(), str(job_id))
        now = [PickOut(**_pick(p)) for p in picks_document(scene_picks(session, job.id))]
    built = built_picks(farm().storage, job.id)
    comic = None if built is None else [PickOut(**_pick(p)) for p in built]
    return PicksOut(items=now, comic=comic, comic_current=comic == now)


def _pick(document: dict[str, Any]) -> dict[str, Any]:
    return {
        "scene": document["scene"],
        "variant": document["variant"],
        "render_id": document["render"],
        "reason": document["reason"],
    }


@api.post("/jobs/<uuid:job_id>/outputs")
@operation("jobs", role=Role.ARTIST, status=202, response=RebuildOut, errors=(409,))
def rebuild_outputs(job_id: Any) -> RebuildOut:
    """Build an ended job's comic, PDF, CBZ and renders zip again, from its picks now."""
    with farm().sessions() as session:
        job = job_of(session, principal(), str(job_id))
    if job.status not in ENDED:
        abort(409, f"job {job.id} is {job.status}; its outputs are built when it ends")
    return RebuildOut(queued=request_outputs(farm(), job.id))


@api.patch("/jobs/<uuid:job_id>/story")
@operation("jobs", role=Role.ARTIST, response=RevisedOut, body=StoryChanges)
def revise(job_id: Any, body: StoryChanges) -> RevisedOut:
    """Revise an ended job's story: the job keeps its id and history, renders what changed
    only (reusing what the project has by content hash), and the previous revisions stay
    readable. Every problem of the new story is reported at once, and nothing changes."""
    changes = body.model_dump(exclude_unset=True)
    if isinstance(body.scenes, SceneEdits):
        changes["scenes"] = body.scenes.model_dump()
    with farm().sessions() as session:
        job = job_of(session, principal(), str(job_id))
        story = revised_story(job, changes, source="body")
    # New control and reference images come as data: URLs, judged and stored as a job's are.
    story = submitted_story(farm().storage, story, {})
    done = revise_job(farm(), job.id, story, project_id=principal().project_id)
    return RevisedOut(
        revision=done.revision,
        summary=done.summary,
        kept=done.kept,
        reused=done.reused,
        rendered=done.rendered,
        retired=done.retired,
        shards=done.shards,
    )


@api.get("/jobs/<uuid:job_id>/revisions")
@operation("jobs", response=RevisionPage)
def revisions(job_id: Any) -> RevisionPage:
    """The job's story revisions, newest first, each with its story and what it cost."""
    with farm().sessions() as session:
        job = job_of(session, principal(), str(job_id))
        rows = history(session, job.id)
        items = [
            RevisionOut(
                number=r.number,
                summary=r.summary,
                kept=r.kept,
                reused=r.reused,
                rendered=r.rendered,
                retired=r.retired,
                created=r.created,
                story=r.spec,
            )
            for r in rows
        ]
        return RevisionPage(current=job.revision, items=items)
