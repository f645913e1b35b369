"""Characters: the list with thumbnails, a new character from dropped photos (each photo
checked as it is dropped, its face box shown or its rejection explained), one character's
photos with their face boxes."""

from __future__ import annotations

from flask import Blueprint, Response, flash, jsonify, redirect, render_template, request, url_for
from sqlalchemy import func, select

from dashboard.context import faces, farm
from dashboard.scope import character_of
from dashboard.security import principal, requires
from dashboard.studio import PhotosRejected, add_character, check_photo, uploaded_photos
from farm.db.models import Character, Job, Role
from farm.errors import InputError
from farm.story import MAX_PHOTOS

characters = Blueprint("characters", __name__)


@characters.get("/characters")
def index() -> str:
    with farm().sessions() as session:
        rows = session.execute(
            select(Character, func.count(Job.id))
            .outerjoin(Job, Job.character_id == Character.id)
            .where(Character.project_id == principal().project_id, Character.deleted.is_(None))
            .group_by(Character.id)
            .order_by(Character.created.desc(), Character.id.desc())
        ).all()
    return render_template("characters/index.html", rows=rows)


@characters.route("/characters/new", methods=["GET", "POST"])
@requires(Role.ARTIST)
def new() -> str | Response | tuple[str, int]:
    if request.method == "GET":
        return render_template("characters/new.html", form={}, checks=[], max_photos=MAX_PHOTOS)
    form = request.form
    try:
        character = add_character(
            farm(),
            faces(),
            principal(),
            name=form.get("name", ""),
            class_word=form.get("class_word", ""),
            trigger=form.get("trigger", "").strip() or "img",
            face_crop=form.get("face_crop") == "on",
            photos=uploaded_photos(request.files.getlist("photos")),
        )
    except PhotosRejected as rejected:
        page = render_template(
            "characters/new.html",
            form=form,
            checks=rejected.checks,
            error="Some photos cannot be used; nothing was saved.",
            max_photos=MAX_PHOTOS,
        )
        return page, 400
    except InputError as error:
        page = render_template(
            "characters/new.html", form=form, checks=[], error=str(error), max_photos=MAX_PHOTOS
        )
        return page, 400
    flash(f"Character {character.name} made from {len(character.photos)} photo(s).")
    return redirect(url_for("characters.detail", character_id=character.id))


@characters.post("/characters/check-photo")
@requires(Role.ARTIST)
def check() -> Response:
    """One dropped photo, judged as the character form will judge it; nothing is stored."""
    photos = uploaded_photos(request.files.getlist("photo")[:1])
    if not photos:
        raise InputError("photo: send one image file")
    result = check_photo(faces(), photos[0], farm().settings.photo_max_pixels)
    return jsonify(
        name=result.name,
        ok=result.ok,
        width=result.width,
        height=result.height,
        box=result.box,
        reason=result.reason,
    )


@characters.get("/characters/<int:character_id>")
def detail(character_id: int) -> str:
    with farm().sessions() as session:
        character = character_of(session, principal(), character_id)
        jobs = list(
            session.scalars(
                select(Job)
                .where(Job.character_id == character.id)
                .order_by(Job.created.desc())
                .limit(20)
            )
        )
    return render_template("characters/detail.html", character=character, jobs=jobs)


@characters.post("/characters/<int:character_id>/delete")
@requires(Role.ARTIST)
def delete(character_id: int) -> Response:
    with farm().sessions.begin() as session:
        character = character_of(session, principal(), character_id)
        character.soft_delete()
        name = character.name
    flash(f"Character {name} deleted; its jobs keep their renders.")
    return redirect(url_for("characters.index"))
