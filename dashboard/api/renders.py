"""`/api/v1/renders/<id>`: one render, with a URL its image can be fetched from."""

from __future__ import annotations

from flask import url_for

from dashboard.api import api, operation
from dashboard.api.schemas import RenderOut
from dashboard.context import farm
from dashboard.files import browser_url
from dashboard.scope import render_of
from dashboard.security import principal
from farm.db.models import Render


def render_out(render: Render) -> RenderOut:
    image_url = thumb_url = None
    if render.storage_key is not None:
        # A presigned URL on S3, the dashboard's own (login-protected) URL for a folder.
        image_url = browser_url(render.storage_key) or url_for(
            "files.render_image", render_id=render.id, _external=True
        )
        thumb_key = render.thumb_key or render.storage_key
        thumb_url = browser_url(thumb_key) or url_for(
            "files.thumb", render_id=render.id, _external=True
        )
    return RenderOut(
        id=render.id,
        job_id=render.job_id,
        scene_index=render.scene_index,
        variant=render.variant,
        seed=render.seed,
        prompt=render.prompt,
        negative=render.negative,
        caption=render.caption,
        status=render.status,
        worker_id=render.worker_id,
        device=render.device,
        error=render.error,
        identity_s=render.identity_s,
        denoise_s=render.denoise_s,
        decode_s=render.decode_s,
        upload_s=render.upload_s,
        face_similarity=render.face_similarity,
        qc_retries=render.qc_retries,
        qc_seed=render.qc_seed,
        started=render.started,
        finished=render.finished,
        image_url=image_url,
        thumb_url=thumb_url,
    )


@api.get("/renders/<int:render_id>")
@operation("renders", response=RenderOut)
def get_render(render_id: int) -> RenderOut:
    """One render: prompt, seed, timings, and its image's URL (presigned on S3)."""
    with farm().sessions() as session:
        render, _ = render_of(session, principal(), render_id)
        return render_out(render)
