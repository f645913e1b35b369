"""A job's comic and exports, from its finished renders in SQL and object storage.

Run by the finalize step when a job ends and by `farm comic JOB` on demand. It writes to fixed
keys under the job, so running it again replaces the same objects; pages left over from an
earlier, longer comic are deleted after the new ones are in place.

One panel per scene, showing the scene's pick (farm/picks.py: the variant a person picked,
else the best face, else the first): a comic tells the story once, and the other variants are
in the renders zip. The picks used are written beside the pages (`picks.json`) and into the
CBZ's notes, so a reader, and the job page, can tell which comic they hold. Scenes with no
finished render are left out rather than holding up the comic of a job that partly failed.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from typing import Any

from PIL import Image
from sqlalchemy.orm import Session

from farm.comic.exports import (
    RenderFile,
    cbz_bytes,
    encode_page,
    page_names,
    pdf_bytes,
    renders_zip,
)
from farm.comic.layout import DEFAULT_STYLE, Layout, PageStyle
from farm.comic.pages import A4_300DPI, PageSize, Panel, build_pages
from farm.db.models import Character, Job, Render
from farm.errors import InputError
from farm.picks import Pick, finished_renders, picks_among
from farm.storage import Storage


def comic_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/comic/"


def pdf_key(job_id: str) -> str:
    return f"{comic_prefix(job_id)}comic.pdf"


def cbz_key(job_id: str) -> str:
    return f"{comic_prefix(job_id)}comic.cbz"


def picks_key(job_id: str) -> str:
    return f"{comic_prefix(job_id)}picks.json"


def picks_document(picks: Sequence[Pick]) -> list[dict[str, Any]]:
    """The picks a comic shows, as `picks.json` holds them: scenes numbered from 1."""
    return [
        {
            "scene": p.scene_number,
            "variant": p.render.variant,
            "render": p.render.id,
            "reason": p.reason,
        }
        for p in picks
    ]


def built_picks(storage: Storage, job_id: str) -> list[dict[str, Any]] | None:
    """The picks of the comic in storage, or None when none was built (or before picks)."""
    try:
        return json.loads(storage.get(picks_key(job_id)))
    except KeyError:
        return None


def renders_zip_key(job_id: str) -> str:
    return f"jobs/{job_id}/exports/renders.zip"


def build_job_outputs(
    session: Session,
    storage: Storage,
    job_id: str,
    *,
    layout: Layout = "four-panel",
    page: PageSize = A4_300DPI,
    style: PageStyle = DEFAULT_STYLE,
) -> dict[str, str]:
    """Write the pages (`page-001` ...), `pdf`, `cbz` and `renders` zip; return their keys.

    Only reads from `session`. The `rows` layout is seeded with the story's seed, so a job's
    comic comes out the same every time it is built.
    """
    job = session.get(Job, job_id)
    if job is None:
        raise InputError(f"no job {job_id!r}")
    renders = finished_renders(session, job_id)
    if not renders:
        raise InputError(f"job {job_id} has no finished renders to make a comic of")
    title = outputs_title(session, job)

    picks = picks_among(renders)
    scenes = job.spec.get("scenes", [])
    panels = [
        # Image.open reads only the header; the pixels are decoded when the page needs them.
        Panel(Image.open(io.BytesIO(_fetch(storage, r))), r.caption, _marked_wide(scenes, r))
        for r in (pick.render for pick in picks)
    ]
    pages = build_pages(panels, layout, page, style=style, seed=int(job.spec.get("seed", 0)))

    keys: dict[str, str] = {}
    for name, image in zip(page_names(len(pages), "png"), pages, strict=True):
        key = f"{comic_prefix(job_id)}page-{name}"
        storage.put(key, encode_page(image, "png"), "image/png")
        keys[key.rsplit("/", 1)[1].removesuffix(".png")] = key
    notes = f"render-farm job {job_id}; panels: {'; '.join(p.describe() for p in picks)}"
    storage.put(pdf_key(job_id), pdf_bytes(pages, page.dpi, title=title), "application/pdf")
    keys["pdf"] = pdf_key(job_id)
    cbz = cbz_bytes(pages, title=title, notes=notes)
    storage.put(cbz_key(job_id), cbz, "application/vnd.comicbook+zip")
    keys["cbz"] = cbz_key(job_id)
    archive = renders_zip(render_files(storage, renders), job_id=job_id, title=title)
    storage.put(renders_zip_key(job_id), archive, "application/zip")
    keys["renders"] = renders_zip_key(job_id)

    for stale in list(storage.list(f"{comic_prefix(job_id)}page-")):
        if stale not in keys.values():
            storage.delete(stale)
    # Last: the picks a complete comic was built from (the job page compares them with now's).
    document = json.dumps(picks_document(picks), indent=1).encode()
    storage.put(picks_key(job_id), document, "application/json")
    return keys


def _fetch(storage: Storage, render: Render) -> bytes:
    assert render.storage_key is not None  # the query selects renders that have one
    return storage.get(render.storage_key)


def _marked_wide(scenes: Sequence[Any], render: Render) -> bool:
    """A scene asks for a wide panel (`rows` layout) with `wide: true` in the story."""
    scene = scenes[render.scene_index] if render.scene_index < len(scenes) else None
    return isinstance(scene, dict) and bool(scene.get("wide"))


def outputs_title(session: Session, job: Job) -> str:
    """The title the outputs carry (PDF, CBZ, the zip's manifest): the character's name."""
    character = session.get(Character, job.character_id)
    return character.name if character is not None else job.id


def render_files(storage: Storage, renders: Sequence[Render]) -> Iterator[RenderFile]:
    """Fetched one by one as the zip is written, so only one render is held at a time."""
    for r in renders:
        data = _fetch(storage, r)
        yield RenderFile(r.scene_index, r.variant, r.seed, r.prompt, r.negative, r.caption, data)
