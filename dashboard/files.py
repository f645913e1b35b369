"""Images and comic files, for the project that owns them only.

On S3 the browser is sent to a short-lived presigned URL, so the bytes never pass through the
dashboard. A `file://` URL is no use to a browser on an http page, so with folder storage the
bytes are served from here, behind the same login. Keys come from SQL rows or from a listing
of the job's own prefix, never from the URL: a URL names a row or a position in a listing.
"""

from __future__ import annotations

import io
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, abort, redirect
from PIL import Image
from sqlalchemy import select

from dashboard.context import farm
from dashboard.scope import MAX_ID, character_of, job_of, render_of
from dashboard.security import principal
from farm.db.models import CharacterPhoto, Job
from farm.job_names import file_stem
from farm.recipe import render_filename
from farm.storage.base import Storage

files = Blueprint("files", __name__, url_prefix="/files")

PRESIGNED_FOR_S = 3600
CONTENT_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "pdf": "application/pdf",
    "cbz": "application/vnd.comicbook+zip",
    "zip": "application/zip",
}
IMAGE_TYPES = ("png", "jpg", "jpeg", "webp")


def comic_prefix(job_id: str) -> str:
    """Where the comic step of a finished job writes its pages, PDF and CBZ."""
    return f"jobs/{job_id}/comic/"


def comic_keys(storage: Storage, job_id: str) -> list[str]:
    """The job's finalize outputs: comic pages, PDF and CBZ, then the exports (renders zip)."""
    keys = [*storage.list(comic_prefix(job_id)), *storage.list(f"jobs/{job_id}/exports/")]
    return [key for key in keys if _extension(key) in CONTENT_TYPES]


def browser_url(key: str, download_name: str | None = None) -> str | None:
    """A URL the browser can fetch the object from directly (saved as `download_name`, when
    given), or None (serve it from here)."""
    url = farm().storage.url_for(key, expires_s=PRESIGNED_FOR_S, download_name=download_name)
    return url if urlsplit(url).scheme in ("http", "https") else None


def send_object(key: str, download_name: str | None = None) -> Any:
    url = browser_url(key, download_name)
    if url is not None:
        return redirect(url)
    try:
        data = farm().storage.get(key)
    except KeyError:
        abort(404, "the file is not in object storage (yet)")
    response = Response(data, mimetype=CONTENT_TYPES.get(_extension(key)) or _image_type(data))
    # An object changes under its key only when the same render is made again by a retry.
    response.headers["Cache-Control"] = "private, max-age=300"
    if download_name is not None:
        response.headers["Content-Disposition"] = f'attachment; filename="{download_name}"'
    return response


def _image_type(data: bytes) -> str:
    """Photos are stored by content hash, without an extension; their header says the type
    (the browser is told not to guess: nosniff)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return Image.MIME.get(image.format or "", "application/octet-stream")
    except OSError:
        return "application/octet-stream"


@files.get("/photos/<int:character_id>/<int:position>")
def photo(character_id: int, position: int) -> Any:
    with farm().sessions() as session:
        character = character_of(session, principal(), character_id)
        key = session.scalar(
            select(CharacterPhoto.storage_key).where(
                CharacterPhoto.character_id == character.id,
                CharacterPhoto.position == min(position, MAX_ID),
            )
        )
    if key is None:
        abort(404, f"character {character_id} has no photo {position}")
    return send_object(key)


@files.get("/renders/<int:render_id>")
def render_image(render_id: int) -> Any:
    with farm().sessions() as session:
        render, _ = render_of(session, principal(), render_id)
    if render.storage_key is None:
        abort(404, f"render {render_id} is not finished")
    return send_object(render.storage_key)


@files.get("/renders/<int:render_id>/download")
def render_download(render_id: int) -> Any:
    with farm().sessions() as session:
        render, job = render_of(session, principal(), render_id)
    if render.storage_key is None:
        abort(404, f"render {render_id} is not finished")
    name = render_filename(render.scene_index, render.variant)
    return send_object(render.storage_key, f"{file_stem(job.name, job.id)}-{name}")


@files.get("/renders/<int:render_id>/thumb")
def thumb(render_id: int) -> Any:
    with farm().sessions() as session:
        render, _ = render_of(session, principal(), render_id)
    key = render.thumb_key or render.storage_key
    if key is None:
        abort(404, f"render {render_id} is not finished")
    return send_object(key)


@files.get("/jobs/<uuid:job_id>/comic/<int:number>")
def comic_file(job_id: Any, number: int) -> Any:
    with farm().sessions() as session:
        job = job_of(session, principal(), str(job_id))
    keys = comic_keys(farm().storage, job.id)
    if not 0 <= number < len(keys):
        abort(404, f"job {job.id} has no comic file {number}")
    key = keys[number]
    name = download_name(job, key)
    return send_object(key, None if _extension(key) in IMAGE_TYPES else name)


def download_name(job: Job, key: str) -> str:
    """What a job's output is saved as: its name first (`newton-ch1-comic.pdf`), so that a
    folder of downloads from many jobs still says what each file is."""
    return f"{file_stem(job.name, job.id)}-{key.rsplit('/', 1)[-1]}"


def _extension(key: str) -> str:
    return key.rsplit(".", 1)[-1].lower() if "." in key.rsplit("/", 1)[-1] else ""
