"""The editorial loop in the dashboard: re-roll and pick from the gallery, edit a job's story
(a revision), read its earlier revisions, rebuild its comic from the picks. Forms post to the
same service functions as the API and the CLI; a refusal is a 400 page that says why."""

from __future__ import annotations

import base64
from typing import Any

import yaml
from flask import Blueprint, Response, abort, flash, redirect, render_template, request, url_for
from sqlalchemy import select
from sqlalchemy.orm import Session

from dashboard.context import farm
from dashboard.files import browser_url
from dashboard.scope import job_of
from dashboard.security import principal, requires
from farm.comic.job import built_picks, picks_document
from farm.controls import submitted_story
from farm.db.models import Job, JobRevision, Render, RetiredRender, Role
from farm.documents import parse_document
from farm.errors import InputError
from farm.picks import ENDED, pick_variant, request_outputs, scene_picks
from farm.rerolls import reroll
from farm.reuse import RecipeHasher, job_people
from farm.revisions import history, revise_job, revised_story
from farm.story import Story

editorial = Blueprint("editorial", __name__)

_PEOPLE = ("character", "cast")


def _number(name: str, value: str | None) -> int:
    if value is None or not value.isdigit() or len(value) > 6:
        raise InputError(f"{name}: a whole number (got {value!r})")
    return int(value)


def _back_to_gallery(job_id: str, scene: int) -> Response:
    target = request.form.get("next")
    if target == "render":  # the full-size page the form was on
        return redirect(request.referrer or url_for("gallery.job_gallery", job_id=job_id))
    return redirect(url_for("gallery.job_gallery", job_id=job_id) + f"#scene-{scene}")


@editorial.post("/jobs/<uuid:job_id>/reroll")
@requires(Role.ARTIST)
def reroll_scenes(job_id: Any) -> Response:
    with farm().sessions() as session:
        job = job_of(session, principal(), str(job_id))
    scenes = [_number("scenes", value) for value in request.form.getlist("scenes")]
    variants = _number("variants", request.form.get("variants", "1"))
    done = reroll(farm(), job.id, scenes, variants=variants, project_id=principal().project_id)
    listed = ", ".join(map(str, sorted(set(scenes))))
    flash(f"Re-rolling scene(s) {listed}: {len(done.render_ids)} new variant(s) queued.")
    return _back_to_gallery(job.id, min(scenes))


@editorial.post("/jobs/<uuid:job_id>/pick")
@requires(Role.ARTIST)
def pick(job_id: Any) -> Response:
    with farm().sessions() as session:
        job = job_of(session, principal(), str(job_id))
    scene = _number("scene", request.form.get("scene"))
    variant = _number("variant", request.form.get("variant"))
    chosen = pick_variant(farm(), job.id, scene, variant, project_id=principal().project_id)
    then = "the comic is being built again" if job.status in ENDED else "the comic will show it"
    flash(f"Scene {scene}: v{chosen.render.variant} picked; {then}.")
    return _back_to_gallery(job.id, scene)


@editorial.post("/jobs/<uuid:job_id>/outputs")
@requires(Role.ARTIST)
def rebuild_outputs(job_id: Any) -> Response:
    with farm().sessions() as session:
        job = job_of(session, principal(), str(job_id))
    if job.status not in ENDED:
        abort(409, f"job {job.id} is {job.status}; its comic is built when it ends")
    if request_outputs(farm(), job.id):
        flash("Rebuilding the comic, PDF, CBZ and zip from the picks: reload in a moment.")
    else:
        flash("The broker is out of reach: the comic could not be queued. Try again shortly.")
    return redirect(url_for("jobs.detail", job_id=job.id))


def _editable(job: Job) -> str:
    """The job's story as YAML, without its people (a revision keeps them)."""
    document = {k: v for k, v in job.spec.items() if k not in _PEOPLE}
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)


@editorial.get("/jobs/<uuid:job_id>/story")
@requires(Role.ARTIST)
def story_editor(job_id: Any) -> str:
    with farm().sessions() as session:
        job = job_of(session, principal(), str(job_id))
    return render_template("jobs/story.html", job=job, text=_editable(job), error=None)


@editorial.post("/jobs/<uuid:job_id>/story")
@requires(Role.ARTIST)
def revise(job_id: Any) -> Any:
    text = request.form.get("story", "")
    with farm().sessions() as session:
        job = job_of(session, principal(), str(job_id))
        try:
            data = parse_document(text.encode(), "story", farm().settings.document_limits)
            if not isinstance(data, dict):
                raise InputError("story: a mapping of story fields (scenes, style, steps, ...)")
            # The editor shows the story without its people; everything else is replaced.
            changes = {k: v for k, v in data.items() if k not in _PEOPLE}
            if "scenes" not in changes:
                raise InputError("story: scenes: the story needs its list of scenes")
            story = revised_story(job, changes, source="story")
            story = submitted_story(farm().storage, story, {})  # data: URLs, as the API's
            done = revise_job(farm(), job.id, story, project_id=principal().project_id)
        except InputError as error:
            page = render_template("jobs/story.html", job=job, text=text, error=str(error))
            return page, 400
    flash(
        f"Revision {done.revision}: {done.summary}. {done.kept} render(s) kept, "
        f"{done.reused} reused, {done.rendered} to render."
    )
    return redirect(url_for("jobs.detail", job_id=job.id))


@editorial.get("/jobs/<uuid:job_id>/revisions")
def revisions(job_id: Any) -> str:
    with farm().sessions() as session:
        job = job_of(session, principal(), str(job_id))
        rows = history(session, job.id)
        shown = request.args.get("n", "")
        number = int(shown) if shown.isdigit() and len(shown) < 7 else job.revision
        chosen = next((r for r in rows if r.number == number), None)
        scenes = _revision_scenes(session, job, chosen.spec) if chosen else []
    return render_template(
        "jobs/revisions.html", job=job, revisions=rows, chosen=chosen, scenes=scenes
    )


def _revision_scenes(session: Session, job: Job, spec: dict[str, Any]) -> list[dict[str, Any]]:
    """A revision's scenes with the images it had, found by content hash among the job's
    renders, current and retired (a revision's renders are exactly its story's hashes)."""
    story = Story.model_validate(spec)
    hasher = RecipeHasher(story, job_people(session, job), farm().settings)
    current = {
        r.content_hash: r
        for r in session.scalars(select(Render).where(Render.job_id == job.id))
        if r.content_hash
    }
    retired = {
        r.content_hash: r
        for r in session.scalars(select(RetiredRender).where(RetiredRender.job_id == job.id))
        if r.content_hash
    }
    scenes: dict[int, dict[str, Any]] = {}
    for planned in story.plan():
        content = hasher.content(planned)
        scene = scenes.setdefault(
            planned.scene_index,
            {
                "number": planned.scene_index + 1,
                "prompt": story.scenes[planned.scene_index].prompt,
                "caption": planned.caption,
                "images": [],
            },
        )
        if content in current:
            url = url_for("files.thumb", render_id=current[content].id)
        elif content in retired:
            url = _retired_image(retired[content])
        else:
            url = None
        scene["images"].append({"variant": planned.variant, "url": url})
    return list(scenes.values())


def _retired_image(row: RetiredRender) -> str:
    """A retired render's thumbnail for the history page: a presigned URL where storage gives
    one, else the small WebP inline (no route serves renders that left the job)."""
    key = row.thumb_key or row.storage_key
    url = browser_url(key)
    if url is not None:
        return url
    data = farm().storage.get(key)
    kind = "image/webp" if key.endswith(".webp") else "image/png"
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


@editorial.app_template_global()
def editorial_panel(job: Job) -> dict[str, Any]:
    """What the job page says of the loop: the revision, and whether the comic in storage
    shows the picks of now (else a button rebuilds it). The picks of now are worked out only
    when there is a comic to compare them with: while a job of thousands of renders runs,
    its page does not read them all on every load."""
    built = built_picks(farm().storage, job.id)
    with farm().sessions() as session:
        current = built is not None and built == picks_document(scene_picks(session, job.id))
        revisions = session.scalar(
            select(JobRevision.id).where(JobRevision.job_id == job.id, JobRevision.number > 1)
        )
    return {
        "revision": job.revision,
        "history": revisions is not None,
        "comic_picks": built,
        "comic_current": current,
    }
