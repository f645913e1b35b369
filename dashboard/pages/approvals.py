"""Approving a preview from its job's page: the contact sheet's checked scenes, or all of them,
go to full quality (farm/approval.py); the sheet itself is drawn by the job page."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, flash, redirect, request, url_for

from dashboard.context import farm
from dashboard.scope import job_of
from dashboard.security import principal, requires
from farm.approval import approve_scenes
from farm.db.models import Role
from farm.errors import InputError

approvals = Blueprint("approvals", __name__)


@approvals.post("/jobs/<uuid:job_id>/approve")
@requires(Role.ARTIST)
def approve(job_id: Any) -> Response:
    with farm().sessions() as session:
        job = job_of(session, principal(), str(job_id))
    # A refusal (InputError) is a 400 page that says why; nothing is approved then.
    scenes = None if request.form.get("every") else _checked_scenes()
    approved = approve_scenes(farm(), job.id, scenes)
    flash(
        f"Approved scene(s) {', '.join(map(str, approved.scenes))}: {approved.renders} "
        "render(s) queued at full quality."
    )
    return redirect(url_for("jobs.detail", job_id=job.id))


def _checked_scenes() -> list[int]:
    checked = request.form.getlist("scenes")
    if not all(value.isdigit() and len(value) < 7 for value in checked):
        raise InputError("scenes: tick the scenes to approve")
    return [int(value) for value in checked]
