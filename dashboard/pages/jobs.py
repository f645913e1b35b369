"""The job list and the job page: live progress, shards, thumbnails; cancel, retry, download
everything as a zip, and the comic once there is one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from sqlalchemy import func, select

from dashboard.context import farm
from dashboard.files import IMAGE_TYPES, comic_keys
from dashboard.progress import job_summary
from dashboard.scope import job_of, page_number
from dashboard.security import principal, requires
from farm.approval import contact_sheet
from farm.blocklist import blocked_workers
from farm.comic.exports import stream_renders_zip
from farm.comic.job import finished_renders, outputs_title, render_files
from farm.db.models import Character, Job, Render, Role
from farm.db.states import JobStatus, RenderStatus
from farm.errors import InputError
from farm.job_names import file_stem
from farm.lifecycle import cancel_job, retry_job
from farm.progress import shard_counts, shard_rows
from farm.scheduling import pause_job, resume_job, set_priority

jobs = Blueprint("jobs", __name__)

OPEN = (JobStatus.QUEUED, JobStatus.RUNNING)
THUMBS_ON_PAGE = 200


@jobs.get("/")
def home() -> Response:
    return redirect(url_for("jobs.index"))


@jobs.get("/jobs")
def index() -> str:
    status = request.args.get("status") or None
    page = page_number()
    size = current_app.config["PAGE_SIZE"]
    where = [Job.project_id == principal().project_id]
    if status in set(JobStatus):
        where.append(Job.status == status)
    with farm().sessions() as session:
        total = session.scalar(select(func.count()).select_from(Job).where(*where)) or 0
        rows = session.execute(
            select(Job, Character.name)
            .join(Character, Character.id == Job.character_id)
            .where(*where)
            .order_by(Job.created.desc(), Job.id)
            .limit(size)
            .offset((page - 1) * size)
        ).all()
        done = dict(
            session.execute(
                select(Render.job_id, func.count())
                .where(
                    Render.job_id.in_([job.id for job, _ in rows]),
                    Render.status == RenderStatus.DONE,
                )
                .group_by(Render.job_id)
            ).all()
        )
    return render_template(
        "jobs/index.html",
        rows=rows,
        done=done,
        status=status,
        statuses=list(JobStatus),
        page=page,
        pages=max(1, -(-total // size)),
    )


@jobs.get("/jobs/<uuid:job_id>")
def detail(job_id: Any) -> str:
    with farm().sessions() as session:
        job = job_of(session, principal(), str(job_id))
        character = session.get(Character, job.character_id)
        summary = job_summary(session, job.id)
        shards = shard_rows(session, job.id)
        shard_states = shard_counts(session, job.id)
        blocked = blocked_workers(session, job.id)
        renders = list(
            session.scalars(
                select(Render)
                .where(Render.job_id == job.id, Render.status == RenderStatus.DONE)
                .order_by(Render.scene_index, Render.variant)
                .limit(THUMBS_ON_PAGE)
            )
        )
        retryable = shard_states.by_state["failed"] + shard_states.by_state["cancelled"] > 0
        # The button says what it sends again: a cancelled job with no failure is restarted.
        some_failed = shard_states.by_state["failed"] > 0
        sheet = contact_sheet(session, job)  # empty unless submitted for approval
        qc_retried = session.scalar(
            select(func.count())
            .select_from(Render)
            .where(Render.job_id == job.id, Render.qc_retries > 0)
        )
    has_comic = job.status not in OPEN and bool(comic_keys(farm().storage, job.id))
    return render_template(
        "jobs/detail.html",
        job=job,
        character=character,
        summary=summary,
        shards=shards,
        shard_states=shard_states,
        renders=renders,
        live=job.status in OPEN,
        retryable=retryable and job.status not in OPEN,
        some_failed=some_failed,
        has_comic=has_comic,
        qc_retried=qc_retried,
        interruptions=shard_states.interruptions,
        blocked=blocked,
        story=job.spec,
        sheet=sheet,
    )


@jobs.post("/jobs/<uuid:job_id>/cancel")
@requires(Role.ARTIST)
def cancel(job_id: Any) -> Response:
    with farm().sessions() as session:
        job = job_of(session, principal(), str(job_id))
    job = cancel_job(farm(), job.id)
    flash(
        "Job cancelled."
        if job.status is JobStatus.CANCELLED
        else "Cancel requested: the running shard stops at its next batch."
    )
    return redirect(url_for("jobs.detail", job_id=job.id))


@jobs.post("/jobs/<uuid:job_id>/pause")
@requires(Role.ARTIST)
def pause(job_id: Any) -> Response:
    with farm().sessions() as session:
        job = job_of(session, principal(), str(job_id))
    pause_job(farm(), job.id)
    flash("Job paused: its queued shards wait; a running one stops at its next batch.")
    return redirect(url_for("jobs.detail", job_id=job.id))


@jobs.post("/jobs/<uuid:job_id>/resume")
@requires(Role.ARTIST)
def resume(job_id: Any) -> Response:
    with farm().sessions() as session:
        job = job_of(session, principal(), str(job_id))
    resume_job(farm(), job.id)
    flash("Job resumed: its shards are queued again.")
    return redirect(url_for("jobs.detail", job_id=job.id))


@jobs.post("/jobs/<uuid:job_id>/priority")
@requires(Role.ARTIST)
def priority(job_id: Any) -> Response:
    with farm().sessions() as session:
        job = job_of(session, principal(), str(job_id))
    raw = request.form.get("priority", "")
    if not raw.isdigit():
        raise InputError(f"priority must be a whole number from 0 to 9, got {raw!r}")
    job = set_priority(farm(), job.id, int(raw))
    flash(f"Priority set to {job.priority}: its waiting shards are taken in the new order.")
    return redirect(url_for("jobs.detail", job_id=job.id))


@jobs.post("/jobs/<uuid:job_id>/retry")
@requires(Role.ARTIST)
def retry(job_id: Any) -> Response:
    with farm().sessions() as session:
        job = job_of(session, principal(), str(job_id))
    sent = retry_job(farm(), job.id)
    flash(f"{sent} shard(s) sent again.")
    return redirect(url_for("jobs.detail", job_id=job.id))


@jobs.get("/jobs/<uuid:job_id>/download.zip")
def download(job_id: Any) -> Response:
    """The job's zip, the one its comic step stores (every finished PNG and the manifest of
    their recipes), streamed: written one render at a time, so neither the dashboard's memory
    nor the wait before the first byte grows with the job, and a running job's zip holds
    what is finished so far."""
    with farm().sessions() as session:
        job = job_of(session, principal(), str(job_id))
        renders = finished_renders(session, job.id)
        title = outputs_title(session, job)
    storage = farm().storage

    def chunks() -> Iterator[bytes]:
        sink = _Chunks()
        for _ in stream_renders_zip(
            sink, render_files(storage, renders), job_id=job.id, title=title
        ):
            yield sink.take()

    response = Response(chunks(), mimetype="application/zip")
    name = f"{file_stem(job.name, job.id)}.zip"
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


class _Chunks:
    """A write-only file for `zipfile` that hands over what was written since the last take.

    Not seekable, so zipfile writes data descriptors after each member instead of seeking back
    to patch headers, which is what makes the archive streamable.
    """

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._written = 0

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        self._written += len(data)
        return len(data)

    def tell(self) -> int:
        return self._written

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        chunk, self._parts = b"".join(self._parts), []
        return chunk


@jobs.get("/jobs/<uuid:job_id>/comic")
def comic(job_id: Any) -> str:
    with farm().sessions() as session:
        job = job_of(session, principal(), str(job_id))
    keys = comic_keys(farm().storage, job.id)
    files = [
        {
            "number": number,
            "name": key.rsplit("/", 1)[-1],
            "image": key.rsplit(".", 1)[-1].lower() in IMAGE_TYPES,
        }
        for number, key in enumerate(keys)
    ]
    return render_template("jobs/comic.html", job=job, files=files)
