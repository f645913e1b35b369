"""The API's bodies and answers as pydantic models: they validate what comes in, serialise what
goes out, and give the OpenAPI document its schemas, one definition for all three."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from dashboard.scope import MAX_ID
from farm.auth import MAX_PASSWORD, MIN_PASSWORD, USERNAME
from farm.db.models import Role
from farm.db.states import JobStatus, RenderStatus, ShardStatus
from farm.story import MAX_SCENES

Id = Annotated[int, Field(ge=1, le=MAX_ID)]
MAX_PAGE = 200


class Closed(BaseModel):
    """A request model: an unknown field is a mistake to report, not to ignore."""

    model_config = ConfigDict(extra="forbid")


class ErrorOut(BaseModel):
    error: str = Field(description="What was wrong, naming the field and the fix.")


# --- query strings ---------------------------------------------------------------------------


class PageQuery(Closed):
    limit: int = Field(default=50, ge=1, le=MAX_PAGE)
    offset: int = Field(default=0, ge=0, le=10**9)


class JobQuery(PageQuery):
    status: JobStatus | None = None
    character_id: Id | None = None


class RenderQuery(PageQuery):
    status: RenderStatus | None = None


# --- characters ------------------------------------------------------------------------------


class PhotoOut(BaseModel):
    position: int
    name: str
    width: int
    height: int
    face_box: list[float] | None = Field(description="x0, y0, x1, y1 in the photo's pixels.")
    face_score: float | None
    url: str


class CharacterOut(BaseModel):
    id: int
    name: str
    class_word: str
    trigger: str
    face_crop: bool
    created: datetime
    photos: list[PhotoOut]


class CharacterPage(BaseModel):
    items: list[CharacterOut]
    total: int
    limit: int
    offset: int


# --- jobs ------------------------------------------------------------------------------------


class RunningRenderOut(BaseModel):
    render_id: int
    scene: int
    variant: int
    steps_done: int = Field(description="The denoising step its batch has reached.")
    steps: int | None = Field(description="Its denoising steps; null before the first.")


class ProgressOut(BaseModel):
    total: int
    counts: dict[str, int] = Field(description="Renders per state: queued, running, done, ...")
    fraction: float = Field(description="Done renders, plus running ones by their share of steps.")
    percent: int
    running: list[RunningRenderOut] = Field(
        default_factory=list, description="The renders running now (in a job's detail)."
    )
    eta_s: float | None = Field(
        None, description="Seconds left, from the farm's measured renders of the preset."
    )
    waiting: str | None = Field(
        None, description="Why the job cannot move, e.g. no live worker serves its preset."
    )


class ShardOut(BaseModel):
    index: int
    status: str
    worker_id: str | None
    attempts: int
    max_attempts: int
    interruptions: int = Field(
        description="Runs handed on because their worker was told to stop; not attempts."
    )
    checkpoint_step: int | None = Field(
        description="The denoising step an interrupted batch resumes at, while it waits."
    )
    error: str | None
    started: datetime | None
    finished: datetime | None
    seconds: float | None


class BlockedWorkerOut(BaseModel):
    """A worker kept off the job after failing `failures` of its shards (farm/blocklist.py)."""

    worker_id: str
    failures: int
    last_error: str | None


class TimingsOut(BaseModel):
    """Mean seconds per finished render, per step."""

    identity_s: float | None
    denoise_s: float | None
    decode_s: float | None
    upload_s: float | None


class JobOut(BaseModel):
    id: str
    name: str = Field(description="What people call the job; its downloads carry it.")
    status: JobStatus
    preset: str
    priority: int
    character_id: int
    renders_total: int
    progress: ProgressOut
    cancel_requested: bool
    webhook_url: str | None
    error: str | None
    created: datetime
    started: datetime | None
    finished: datetime | None
    url: str = Field(description="The job's page in the dashboard.")


class JobDetail(JobOut):
    story: dict[str, Any] = Field(description="The validated story the job was planned from.")
    shards: list[ShardOut] = Field(
        description="The shards worth seeing first (running, failed, paused, queued, "
        "cancelled, succeeded), at most 100: `shard_counts` has them all by state, and "
        "GET .../shards pages through every one."
    )
    shard_counts: dict[str, int] = Field(description="All of the job's shards, by state.")
    interruptions: int = Field(description="Shard runs interrupted (preempted), all shards.")
    blocked_workers: list[BlockedWorkerOut] = Field(
        description="Workers that failed two of the job's shards and take no more of them."
    )
    timings: TimingsOut
    device_s: float = Field(
        description="Seconds its finished renders held their devices (QC re-renders included)."
    )
    approval: ApprovalOut | None = Field(
        description="For a job submitted with `approval: preview`: each scene's preview and "
        "whether it is approved (POST .../approve)."
    )
    comic_url: str | None = Field(description="The comic page, once the comic step made one.")
    download_url: str


class JobPage(BaseModel):
    items: list[JobOut]
    total: int
    limit: int
    offset: int


class JobCreated(BaseModel):
    id: str
    renders: int
    shards: int
    url: str


class PlanOut(BaseModel):
    renders: int
    shards: int
    width: int
    height: int
    preset: str
    warnings: list[str] = Field(
        description="What will hold the job up, e.g. 'no worker serves preset X: it will wait' "
        "(a warning: the job is still accepted)."
    )
    estimated_s: float | None = Field(
        description="Seconds on the farm as it is now, from its measured renders of the "
        "preset; null when it has none or no worker serves the preset."
    )
    estimated_device_s: float | None = Field(
        description="Device seconds it would cost, from the farm's measured renders of the "
        "preset scaled by steps x pixels; null when the farm has measured none."
    )


class Retried(BaseModel):
    shards: int = Field(description="How many failed or cancelled shards were sent again.")


# --- renders ---------------------------------------------------------------------------------


class RenderOut(BaseModel):
    id: int
    job_id: str
    scene_index: int
    variant: int
    seed: int
    prompt: str
    negative: str
    caption: str | None
    status: RenderStatus
    worker_id: str | None
    device: str | None
    error: str | None
    identity_s: float | None
    denoise_s: float | None
    decode_s: float | None
    upload_s: float | None
    face_similarity: float | None = Field(
        description="Identity QC: cosine similarity of the render's face to the character's "
        "photos; null when no face was found."
    )
    qc_retries: int = Field(description="Times the render was made again to pass the QC bar.")
    qc_seed: int | None = Field(description="The kept image's seed, when QC replaced it.")
    started: datetime | None
    finished: datetime | None
    image_url: str | None = Field(description="Presigned on S3; a dashboard URL otherwise.")
    thumb_url: str | None


class ShardQuery(PageQuery):
    status: ShardStatus | None = None


class ShardPage(BaseModel):
    items: list[ShardOut]
    total: int
    limit: int
    offset: int


class RenderPage(BaseModel):
    items: list[RenderOut]
    total: int
    limit: int
    offset: int


# --- the farm --------------------------------------------------------------------------------


class WorkerOut(BaseModel):
    id: str
    hostname: str
    device: str
    presets: list[str]
    status: str
    current_shard_id: int | None
    current_job_id: str | None
    heartbeat_age_s: float
    renders_done: int
    renders_failed: int
    started: datetime


class WorkerList(BaseModel):
    items: list[WorkerOut]


class QueueOut(BaseModel):
    preset: str
    queue: str
    queued_shards: int
    running_shards: int
    broker_messages: int | None = Field(description="None when the broker could not be asked.")
    broker_by_priority: dict[int, int] | None = Field(
        default=None,
        description="Messages per farm priority (9 first), where the broker keeps priorities "
        "(Redis); None elsewhere.",
    )


class QueueList(BaseModel):
    items: list[QueueOut]


# --- tokens and accounts ---------------------------------------------------------------------


class MeOut(BaseModel):
    project: str
    role: Role
    kind: str = Field(description="token or account")
    name: str


class TokenCreate(Closed):
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=80)]
    role: Role
    expires_in: str | None = Field(
        None, description="How long the token lives, e.g. 30d, 12h, 90m, 8w; null: until revoked."
    )


class TokenOut(BaseModel):
    id: int
    name: str
    role: Role
    prefix: str = Field(description="The start of the secret, to recognise the token by.")
    created: datetime
    last_used: datetime | None = Field(description="Noted at most once a minute.")
    revoked: datetime | None
    expires: datetime | None


class TokenCreated(TokenOut):
    secret: str = Field(description="Shown this once; the farm keeps only its hash.")


class TokenList(BaseModel):
    items: list[TokenOut]


class AccountCreate(Closed):
    username: Annotated[str, StringConstraints(pattern=USERNAME.pattern)]
    password: Annotated[str, StringConstraints(min_length=MIN_PASSWORD, max_length=MAX_PASSWORD)]
    role: Role


class AccountOut(BaseModel):
    id: int
    username: str
    role: Role
    created: datetime
    last_login: datetime | None
    disabled: datetime | None


class AccountList(BaseModel):
    items: list[AccountOut]


class OutputFile(BaseModel):
    name: str
    kind: str = Field(description="png (a comic page), pdf, cbz or zip (the renders).")
    url: str = Field(description="Presigned on S3; a dashboard URL otherwise.")


class JobOutputs(BaseModel):
    """What the finalize step of an ended job built; empty until then."""

    items: list[OutputFile]


# --- approval of a preview -------------------------------------------------------------------


class SceneApprovalOut(BaseModel):
    scene: int = Field(description="The scene's number, from 1.")
    state: str = Field(description="approved, ready (its preview is rendered) or previewing.")
    preview_render_id: int | None = Field(description="The preview render that is approved.")
    seed: int | None = Field(description="The seed its full-quality render takes.")
    thumb_url: str | None


class ApprovalOut(BaseModel):
    """The contact sheet of a job submitted with `approval: preview`."""

    preview_job_id: str
    scenes: list[SceneApprovalOut]


class ApproveRequest(Closed):
    scenes: list[Annotated[int, Field(ge=1, le=MAX_SCENES)]] | None = Field(
        default=None,
        description="Scene numbers (from 1) to approve; null or absent: every scene not yet "
        "approved.",
    )


class ApprovedOut(BaseModel):
    scenes: list[int] = Field(description="The scenes approved, numbered from 1.")
    renders: int = Field(description="Full-quality renders queued for them.")
    shards: int
