"""A job's gallery, and one render at full size with its prompt, seed and settings."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, render_template
from sqlalchemy import and_, func, or_, select

from dashboard.context import farm
from dashboard.scope import job_of, page_number, render_of
from dashboard.security import principal
from farm.db.models import Render
from farm.db.states import RenderStatus
from farm.picks import scene_picks
from farm.story import Story

gallery = Blueprint("gallery", __name__)


@gallery.get("/jobs/<uuid:job_id>/gallery")
def job_gallery(job_id: Any) -> str:
    page = page_number()
    size = current_app.config["PAGE_SIZE"] * 2
    with farm().sessions() as session:
        job = job_of(session, principal(), str(job_id))
        where = (Render.job_id == job.id, Render.status == RenderStatus.DONE)
        total = session.scalar(select(func.count()).select_from(Render).where(*where)) or 0
        renders = list(
            session.scalars(
                select(Render)
                .where(*where)
                .order_by(Render.scene_index, Render.variant)
                .limit(size)
                .offset((page - 1) * size)
            )
        )
        # Each scene's pick, which the comic shows and the gallery marks.
        picks = {pick.render.scene_index: pick for pick in scene_picks(session, job.id)}
    return render_template(
        "gallery/job.html",
        job=job,
        renders=renders,
        picks=picks,
        page=page,
        pages=max(1, -(-total // size)),
        total=total,
    )


@gallery.get("/renders/<int:render_id>")
def render(render_id: int) -> str:
    with farm().sessions() as session:
        shown, job = render_of(session, principal(), render_id)
        here = (shown.scene_index, shown.variant)
        done = (Render.job_id == job.id, Render.status == RenderStatus.DONE)
        previous = session.scalar(
            select(Render.id)
            .where(*done, _before(*here))
            .order_by(Render.scene_index.desc(), Render.variant.desc())
            .limit(1)
        )
        following = session.scalar(
            select(Render.id)
            .where(*done, ~_before(*here), ~_at(*here))
            .order_by(Render.scene_index, Render.variant)
            .limit(1)
        )
    story = Story.model_validate(job.spec)
    width, height = story.render_size()
    return render_template(
        "gallery/render.html",
        render=shown,
        job=job,
        story=story,
        scene=story.scenes[shown.scene_index] if shown.scene_index < len(story.scenes) else None,
        size=(width, height),
        previous=previous,
        following=following,
    )


def _before(scene: int, variant: int) -> Any:
    return or_(
        Render.scene_index < scene, and_(Render.scene_index == scene, Render.variant < variant)
    )


def _at(scene: int, variant: int) -> Any:
    return and_(Render.scene_index == scene, Render.variant == variant)
