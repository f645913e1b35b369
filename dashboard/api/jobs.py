"""`/api/v1/jobs`: submit a story for a character, list, read, cancel and retry jobs, and list
a job's renders."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import url_for
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dashboard.api import api, json_body, operation
from dashboard.api.approvals import approval_out
from dashboard.api.renders import render_out
from dashboard.api.schemas import (
    BlockedWorkerOut,
    JobCreated,
    JobDetail,
    JobOut,
    JobOutputs,
    JobPage,
    JobQuery,
    OutputFile,
    PlanOut,
    ProgressOut,
    RenderPage,
    RenderQuery,
    Retried,
    RunningRenderOut,
    ShardOut,
    ShardPage,
    ShardQuery,
    TimingsOut,
)
from dashboard.context import farm
from dashboard.files import browser_url, comic_keys, download_name
from dashboard.progress import job_summary
from dashboard.scope import MAX_ID, character_of, job_of
from dashboard.security import principal
from dashboard.studio import cast_of, plan_of, story_for, submit
from farm.blocklist import blocked_workers
from farm.db.models import Job, Render, Role
from farm.db.states import JobStatus, RenderStatus
from farm.errors import InputError
from farm.jobs import check_submission
from farm.lifecycle import cancel_job, retry_job
from farm.progress import shard_counts, shard_rows
from farm.webhooks import check_webhook_url

ENDED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


def job_request(body: dict[str, Any]) -> tuple[int, dict[str, Any], int, str | None]:
    """Split a job body into the character, the story, the priority and the webhook."""
    story = dict(body)
    character_id = story.pop("character_id", None)
    priority = story.pop("priority", 5)
    webhook_url = story.pop("webhook_url", None)
    if "character" in story:
        raise InputError(
            "character: name the character by character_id (make one with POST "
            "/api/v1/characters); its photos come from there"
        )
    if type(character_id) is not int or not 1 <= character_id <= MAX_ID:
        raise InputError(
            f"character_id: required, the id of one of your characters (got {character_id!r})"
        )
    if type(priority) is not int:
        raise InputError(f"priority: a whole number from 0 to 9 (got {priority!r})")
    if webhook_url is not None and not isinstance(webhook_url, str):
        raise InputError(f"webhook_url: a URL or null (got {webhook_url!r})")
    return character_id, story, priority, webhook_url


def counts_of(session: Session, job_ids: list[str]) -> dict[str, dict[str, int]]:
    """Render counts per state for many jobs in one GROUP BY, for a page of the job list."""
    counts: dict[str, dict[str, int]] = {
        job_id: {str(state): 0 for state in RenderStatus} for job_id in job_ids
    }
    rows = session.execute(
        select(Render.job_id, Render.status, func.count())
        .where(Render.job_id.in_(job_ids))
        .group_by(Render.job_id, Render.status)
    )
    for job_id, status, count in rows:
        counts[job_id][str(status)] = count
    return counts


def job_out(job: Job, counts: dict[str, int]) -> JobOut:
    done = counts.get(str(RenderStatus.DONE), 0)
    total = job.renders_total
    return JobOut(
        id=job.id,
        name=job.name,
        status=job.status,
        preset=job.preset,
        priority=job.priority,
        character_id=job.character_id,
        renders_total=total,
        progress=ProgressOut(
            total=total,
            counts=counts,
            fraction=round(done / total, 4) if total else 1.0,
            percent=round(100 * done / total) if total else 100,
        ),
        cancel_requested=job.cancel_requested,
        webhook_url=job.webhook_url,
        error=job.error,
        created=job.created,
        started=job.started,
        finished=job.finished,
        url=url_for("jobs.detail", job_id=job.id, _external=True),
    )


def progress_out(summary: dict[str, Any]) -> ProgressOut:
    """A job's progress per render and step, with its ETA and why it waits (the job page's)."""
    return ProgressOut(
        **{key: summary[key] for key in ("total", "counts", "fraction", "percent")},
        running=[RunningRenderOut(**r) for r in summary["running"]],
        eta_s=summary["eta_s"],
        waiting=summary["waiting"],
    )


def job_detail(session: Session, job: Job) -> JobDetail:
    summary = job_summary(session, job.id)
    assert summary is not None  # the caller has just read the job
    has_comic = job.status in ENDED and bool(comic_keys(farm().storage, job.id))
    counts = shard_counts(session, job.id)
    return JobDetail(
        **{**job_out(job, summary["counts"]).model_dump(), "progress": progress_out(summary)},
        story=job.spec,
        shards=[ShardOut(**row) for row in shard_rows(session, job.id)],
        shard_counts=counts.by_state,
        interruptions=counts.interruptions,
        blocked_workers=[
            BlockedWorkerOut(worker_id=b.worker_id, failures=b.failures, last_error=b.last_error)
            for b in blocked_workers(session, job.id)
        ],
        timings=TimingsOut(**summary["timings"]),
        device_s=summary["device_s"],
        approval=approval_out(session, job),
        comic_url=url_for("jobs.comic", job_id=job.id, _external=True) if has_comic else None,
        download_url=url_for("jobs.download", job_id=job.id, _external=True),
    )


@api.get("/jobs")
@operation("jobs", response=JobPage, query=JobQuery)
def list_jobs(query: JobQuery) -> JobPage:
    """The project's jobs, newest first, by status or character."""
    where = [Job.project_id == principal().project_id]
    if query.status is not None:
        where.append(Job.status == query.status)
    if query.character_id is not None:
        where.append(Job.character_id == query.character_id)
    with farm().sessions() as session:
        total = session.scalar(select(func.count()).select_from(Job).where(*where))
        jobs = list(
            session.scalars(
                select(Job)
                .where(*where)
                .order_by(Job.created.desc(), Job.id)
                .limit(query.limit)
                .offset(query.offset)
            )
        )
        counts = counts_of(session, [job.id for job in jobs])
    return JobPage(
        items=[job_out(job, counts[job.id]) for job in jobs],
        total=total or 0,
        limit=query.limit,
        offset=query.offset,
    )


@api.post("/jobs")
@operation(
    "jobs",
    role=Role.ARTIST,
    status=201,
    response=JobCreated,
    body_schema="JobCreate",
    errors=(404,),  # the character is not one of the project's
)
def create_job() -> JobCreated:
    """Submit a story for one of the project's characters.

    The body is a story (scenes, preset, style, size, steps, ...) as in a story file, with
    `character_id` in place of the character section; every problem is reported at once,
    each naming its field, and nothing is written.
    """
    character_id, story, priority, webhook_url = job_request(json_body())
    submitted = submit(
        farm(),
        principal(),
        character_id,
        story,
        priority=priority,
        webhook_url=webhook_url,
    )
    return JobCreated(
        id=submitted.job_id,
        renders=submitted.renders,
        shards=submitted.shards,
        url=url_for("jobs.detail", job_id=submitted.job_id, _external=True),
    )


@api.post("/jobs/plan")
@operation("jobs", role=Role.ARTIST, response=PlanOut, body_schema="JobCreate", errors=(404,))
def plan_job() -> PlanOut:
    """How many renders and shards a story would make; nothing is written or sent.

    The priority and the webhook are judged as a submission judges them, so that a plan that
    passes is a job that will be accepted.
    """
    character_id, story, priority, webhook_url = job_request(json_body())
    with farm().sessions() as session:
        character = character_of(session, principal(), character_id)
        planned = story_for(character, story, cast=cast_of(session, principal(), story))
    check_submission(planned, priority)
    if webhook_url:
        check_webhook_url(webhook_url, farm().settings)
    return PlanOut(**vars(plan_of(farm(), planned)))


@api.get("/jobs/<uuid:job_id>")
@operation("jobs", response=JobDetail)
def get_job(job_id: Any) -> JobDetail:
    """A job with its progress, shards (state, worker, error) and timings."""
    with farm().sessions() as session:
        return job_detail(session, job_of(session, principal(), str(job_id)))


@api.post("/jobs/<uuid:job_id>/cancel")
@operation("jobs", role=Role.ARTIST, response=JobOut)
def cancel(job_id: Any) -> JobOut:
    """Cancel a queued or running job: queued shards end now, a running one at its next batch."""
    return changed(str(job_id), lambda job: cancel_job(farm(), job))


def changed(job_id: str, change: Callable[[str], object]) -> JobOut:
    """Apply `change` to one of the project's jobs (404 for another's, before any change) and
    answer the job as it now is: cancel, pause, resume, priority."""
    with farm().sessions() as session:
        job = job_of(session, principal(), job_id)
    change(job.id)
    with farm().sessions() as session:
        job = job_of(session, principal(), job.id)
        return job_out(job, counts_of(session, [job.id])[job.id])


@api.post("/jobs/<uuid:job_id>/retry")
@operation("jobs", role=Role.ARTIST, response=Retried)
def retry(job_id: Any) -> Retried:
    """Send the failed and cancelled shards of an ended job again."""
    with farm().sessions() as session:
        job = job_of(session, principal(), str(job_id))
    return Retried(shards=retry_job(farm(), job.id))


@api.get("/jobs/<uuid:job_id>/renders")
@operation("renders", response=RenderPage, query=RenderQuery)
def list_renders(job_id: Any, query: RenderQuery) -> RenderPage:
    """A job's renders in scene order, each with the URL of its image once finished."""
    with farm().sessions() as session:
        job = job_of(session, principal(), str(job_id))
        where = [Render.job_id == job.id]
        if query.status is not None:
            where.append(Render.status == query.status)
        total = session.scalar(select(func.count()).select_from(Render).where(*where))
        renders = session.scalars(
            select(Render)
            .where(*where)
            .order_by(Render.scene_index, Render.variant)
            .limit(query.limit)
            .offset(query.offset)
        )
        items = [render_out(render) for render in renders]
    return RenderPage(items=items, total=total or 0, limit=query.limit, offset=query.offset)


@api.get("/jobs/<uuid:job_id>/shards")
@operation("jobs", response=ShardPage, query=ShardQuery)
def list_shards(job_id: Any, query: ShardQuery) -> ShardPage:
    """A job's shards, a page at a time: those worth seeing first (running, failed, paused,
    queued, cancelled, succeeded, each in shard order), or those of one `status`."""
    with farm().sessions() as session:
        job = job_of(session, principal(), str(job_id))
        counts = shard_counts(session, job.id).by_state
        rows = shard_rows(
            session, job.id, limit=query.limit, offset=query.offset, status=query.status
        )
    total = counts[str(query.status)] if query.status is not None else sum(counts.values())
    return ShardPage(
        items=[ShardOut(**row) for row in rows],
        total=total,
        limit=query.limit,
        offset=query.offset,
    )


@api.get("/jobs/<uuid:job_id>/outputs")
@operation("jobs", response=JobOutputs)
def outputs(job_id: Any) -> JobOutputs:
    """The comic pages, PDF, CBZ and renders zip of an ended job, each with a download URL."""
    with farm().sessions() as session:
        job = job_of(session, principal(), str(job_id))
    items = []
    for number, key in enumerate(comic_keys(farm().storage, job.id)):
        name = download_name(job, key)
        url = browser_url(key, name) or url_for(
            "files.comic_file", job_id=job.id, number=number, _external=True
        )
        items.append(OutputFile(name=name, kind=name.rsplit(".", 1)[-1], url=url))
    return JobOutputs(items=items)
