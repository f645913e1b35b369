"""`/api/v1/characters`: make a character from photos, list, read and delete them."""

from __future__ import annotations

from flask import request, url_for
from sqlalchemy import func, select

from dashboard.api import api, operation
from dashboard.api.schemas import CharacterOut, CharacterPage, PageQuery, PhotoOut
from dashboard.context import faces, farm
from dashboard.scope import character_of
from dashboard.security import principal
from dashboard.studio import add_character, uploaded_photos
from farm.db.models import Character, Role


def character_out(character: Character) -> CharacterOut:
    return CharacterOut(
        id=character.id,
        name=character.name,
        class_word=character.class_word,
        trigger=character.trigger,
        face_crop=character.face_crop,
        created=character.created,
        photos=[
            PhotoOut(
                position=p.position,
                name=p.name,
                width=p.width,
                height=p.height,
                face_box=(
                    None if p.face_x0 is None else [p.face_x0, p.face_y0, p.face_x1, p.face_y1]
                ),
                face_score=p.face_score,
                url=url_for(
                    "files.photo", character_id=character.id, position=p.position, _external=True
                ),
            )
            for p in character.photos
        ],
    )


@api.get("/characters")
@operation("characters", response=CharacterPage, query=PageQuery)
def list_characters(query: PageQuery) -> CharacterPage:
    """The project's characters, newest first."""
    where = (Character.project_id == principal().project_id, Character.deleted.is_(None))
    with farm().sessions() as session:
        total = session.scalar(select(func.count()).select_from(Character).where(*where))
        rows = session.scalars(
            select(Character)
            .where(*where)
            .order_by(Character.created.desc(), Character.id.desc())
            .limit(query.limit)
            .offset(query.offset)
        )
        items = [character_out(c) for c in rows]
    return CharacterPage(items=items, total=total or 0, limit=query.limit, offset=query.offset)


@api.post("/characters")
@operation(
    "characters",
    role=Role.ARTIST,
    status=201,
    response=CharacterOut,
    body_schema="CharacterCreate",
    body_type="multipart/form-data",
)
def create_character() -> CharacterOut:
    """Make a character from 1 to 16 photos.

    Every photo must be a real JPEG, PNG or WebP image with one clear face; the answer to a
    rejected upload names each bad photo and why, and nothing is stored. Uploading the same
    photos with the same words again returns the character made before.
    """
    form = request.form
    with_face_crop = form.get("face_crop", "false").lower() in ("1", "true", "on", "yes")
    character = add_character(
        farm(),
        faces(),
        principal(),
        name=form.get("name", ""),
        class_word=form.get("class_word", ""),
        trigger=form.get("trigger", "img") or "img",
        face_crop=with_face_crop,
        photos=uploaded_photos(request.files.getlist("photos")),
    )
    with farm().sessions() as session:
        return character_out(character_of(session, principal(), character.id))


@api.get("/characters/<int:character_id>")
@operation("characters", response=CharacterOut)
def get_character(character_id: int) -> CharacterOut:
    """One character with its photos and their face boxes."""
    with farm().sessions() as session:
        return character_out(character_of(session, principal(), character_id))


@api.delete("/characters/<int:character_id>")
@operation("characters", role=Role.ARTIST, status=204)
def delete_character(character_id: int) -> None:
    """Hide a character; the jobs made with it keep their renders."""
    with farm().sessions.begin() as session:
        character_of(session, principal(), character_id).soft_delete()
