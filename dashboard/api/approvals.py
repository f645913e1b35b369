"""`/api/v1/jobs/<id>/approve`: approve scenes of a job submitted with `approval: preview`, all
at once or scene by scene; the contact sheet itself is part of the job (`approval`)."""

from __future__ import annotations

from typing import Any

from flask import url_for
from sqlalchemy.orm import Session

from dashboard.api import api, operation
from dashboard.api.schemas import ApprovalOut, ApprovedOut, ApproveRequest, SceneApprovalOut
from dashboard.context import farm
from dashboard.files import browser_url
from dashboard.scope import job_of
from dashboard.security import principal
from farm.approval import approve_scenes, contact_sheet
from farm.db.models import Job, Role
from farm.preview import approved_seed, preview_of


def approval_out(session: Session, job: Job) -> ApprovalOut | None:
    """The job's contact sheet; None for a job not submitted for approval."""
    preview = preview_of(session, job.id)
    if preview is None:
        return None
    scenes = []
    for scene in contact_sheet(session, job):
        shown = scene.preview
        thumb_url = None
        if shown is not None and shown.storage_key is not None:
            thumb_url = browser_url(shown.thumb_key or shown.storage_key) or url_for(
                "files.thumb", render_id=shown.id, _external=True
            )
        scenes.append(
            SceneApprovalOut(
                scene=scene.number,
                state=scene.state,
                preview_render_id=shown.id if shown else None,
                seed=approved_seed(shown) if shown else None,
                thumb_url=thumb_url,
            )
        )
    return ApprovalOut(preview_job_id=preview.id, scenes=scenes)


@api.post("/jobs/<uuid:job_id>/approve")
@operation("jobs", role=Role.ARTIST, response=ApprovedOut, body=ApproveRequest)
def approve_job(job_id: Any, body: ApproveRequest) -> ApprovedOut:
    """Approve scenes of a job awaiting approval: each goes to full quality with its preview's
    seed. `scenes` names them (from 1); without it every scene not yet approved is. A job that
    was not submitted for approval, has ended, or a scene that is unknown, approved already or
    not previewed yet is refused, and nothing changes."""
    with farm().sessions() as session:
        job = job_of(session, principal(), str(job_id))
    approved = approve_scenes(farm(), job.id, body.scenes)
    return ApprovedOut(scenes=approved.scenes, renders=approved.renders, shards=approved.shards)
