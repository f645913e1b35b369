"""The farm's tables as typed SQLAlchemy models, and the state transitions of their rows.

Every change of state goes through a method here (`shard.start(...)`, `render.finish(...)`),
which checks the move and sets the timestamps that go with it, so that no caller can leave a
running shard without a lease or a finished render without its finish time. The schema itself
is made only by the migrations in `farm/db/migrations`; a test checks that the two agree.

Relationships between jobs, shards and renders raise instead of loading lazily: in the hot path
a silent load of a job's 10,000 renders is a bug to see, not to suffer. Load them explicitly
(`selectinload`), or query the rows you need.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Enum,
    ForeignKey,
    Index,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from farm.db.states import (
    JOB_MOVES,
    RENDER_MOVES,
    SHARD_MOVES,
    WORKER_MOVES,
    JobStatus,
    Move,
    RenderStatus,
    ShardStatus,
    TransitionError,
    WorkerStatus,
    moved,
)
from farm.db.types import UTCDateTime, sql_now, utcnow

# Stable constraint names, so that a later migration can name what it alters or drops.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

HASH_LENGTH = 64  # a sha256 in hex
KEY_LENGTH = 1024  # an object-storage key
NAME_LENGTH = 255


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {  # noqa: RUF012 - read once by SQLAlchemy, never mutated
        datetime: UTCDateTime(),
        dict[str, Any]: JSON,
        list[str]: JSON,
    }


class Timestamps:
    """`created` and `updated` on the database's clock, read back (RETURNING) on every write.

    Reading them back with the write means a row stays usable after its session closes,
    instead of reloading its expired timestamps, or failing to, on first access.
    """

    __mapper_args__ = {"eager_defaults": True}  # noqa: RUF012 - read once by SQLAlchemy

    created: Mapped[datetime] = mapped_column(server_default=sql_now())
    updated: Mapped[datetime] = mapped_column(server_default=sql_now(), onupdate=sql_now())


def _status_column(initial: StrEnum) -> Any:
    """A state stored as its value in a string column, with a CHECK listing the values.

    Not a native enum: adding a state is then a plain migration on both backends.
    """
    return mapped_column(
        Enum(
            type(initial),
            name="status",
            native_enum=False,
            create_constraint=True,
            length=20,
            values_callable=lambda members: [member.value for member in members],
            validate_strings=True,
        ),
        server_default=initial.value,
    )


def _move(row: Any, name: str) -> None:
    """Move `row` by its table's move `name` (farm/db/states.py), or raise TransitionError."""
    row.status = moved(f"{type(row).__name__} {row.id}", row.status, row.MOVES, name)


def new_job_id() -> str:
    """A random UUID: job ids appear in URLs, so they must not be guessable or enumerable."""
    return str(uuid.uuid4())


DEFAULT_PROJECT = "default"
# Rows made without naming a project (the CLI, scripts, older callers) belong to the default
# project, which migration 0002 creates; the dashboard and the API always name theirs.
_IN_DEFAULT_PROJECT = text(f"(SELECT id FROM projects WHERE name = '{DEFAULT_PROJECT}')")


class Character(Timestamps, Base):
    """A person shown to PhotoMaker by reference photos; kept (soft-deleted) while jobs name it."""

    __tablename__ = "characters"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80))
    class_word: Mapped[str] = mapped_column(String(30))
    trigger: Mapped[str] = mapped_column(String(20))
    face_crop: Mapped[bool] = mapped_column(server_default=false())
    # sha256 over the photos' content hashes, in order: finds a character with the same photos.
    photos_fingerprint: Mapped[str] = mapped_column(String(HASH_LENGTH), index=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id"), index=True, default=_IN_DEFAULT_PROJECT
    )
    deleted: Mapped[datetime | None]

    # At most a few photos, needed whenever the character is: loaded with it, in one query.
    photos: Mapped[list[CharacterPhoto]] = relationship(
        order_by="CharacterPhoto.position",
        cascade="all, delete-orphan",
        passive_deletes=True,
        lazy="selectin",
    )

    def soft_delete(self, now: datetime | None = None) -> None:
        """Hide the character; its row stays, because past jobs still refer to it."""
        self.deleted = now or utcnow()


class CharacterPhoto(Timestamps, Base):
    __tablename__ = "character_photos"
    __table_args__ = (UniqueConstraint("character_id", "position"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    character_id: Mapped[int] = mapped_column(ForeignKey("characters.id", ondelete="CASCADE"))
    position: Mapped[int]
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))  # the uploaded file's, for messages
    sha256: Mapped[str] = mapped_column(String(HASH_LENGTH))
    storage_key: Mapped[str] = mapped_column(String(KEY_LENGTH))
    width: Mapped[int]
    height: Mapped[int]
    face_x0: Mapped[float | None]
    face_y0: Mapped[float | None]
    face_x1: Mapped[float | None]
    face_y1: Mapped[float | None]
    face_score: Mapped[float | None]


class CastMember(Timestamps, Base):
    """A character besides the job's main one, and the trigger word its prompts use for it."""

    __tablename__ = "job_cast"
    __table_args__ = (UniqueConstraint("job_id", "trigger"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    character_id: Mapped[int] = mapped_column(ForeignKey("characters.id"))
    trigger: Mapped[str] = mapped_column(String(20))
    position: Mapped[int]


class JobControlImage(Timestamps, Base):
    """A control image (pose, depth or edge map) a job's scenes use, stored once per content
    under `controls/` and shared by every job that sends the same bytes: these rows are what
    keeps it from `farm gc` while a job, its preview or a retry may read it."""

    __tablename__ = "job_control_images"
    __table_args__ = (UniqueConstraint("job_id", "sha256"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    sha256: Mapped[str] = mapped_column(String(HASH_LENGTH))
    storage_key: Mapped[str] = mapped_column(String(KEY_LENGTH), index=True)


class JobConsistencyTokens(Timestamps, Base):
    """The shared tokens of a story-mode job's reference scenes (farm/render/reference_scenes.py),
    stored under `consistency/<character>/<digest>/` and shared by every job with the same
    references, and those of its outfits' and locations' reference images
    (farm/render/reference_images.py, under `reference-images/<digest>/`; `references` counts
    the images): these rows keep them from `farm gc` while a job (a retry, a revision) may read
    them, go with their job, and say what they cost in storage."""

    __tablename__ = "job_consistency_tokens"
    __table_args__ = (UniqueConstraint("job_id", "storage_prefix"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    storage_prefix: Mapped[str] = mapped_column(String(KEY_LENGTH), index=True)
    references: Mapped[int]
    stored_bytes: Mapped[int] = mapped_column(BigInteger)


class StoredIdentityTokens(Timestamps, Base):
    """Where the identity tokens for (encoder weights, photos) lie in object storage.

    The row is what makes "compute once, on any worker" checkable, and `seconds` says what a
    cache hit saved.
    """

    __tablename__ = "identity_tokens"
    __table_args__ = (UniqueConstraint("encoder_fingerprint", "photos_fingerprint"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    encoder_fingerprint: Mapped[str] = mapped_column(String(HASH_LENGTH))
    photos_fingerprint: Mapped[str] = mapped_column(String(HASH_LENGTH))
    storage_key: Mapped[str] = mapped_column(String(KEY_LENGTH))
    num_tokens: Mapped[int]
    seconds: Mapped[float]


class Job(Timestamps, Base):
    """One submitted story: its validated spec, and the state of the whole."""

    __tablename__ = "jobs"
    MOVES: ClassVar[Mapping[str, Move]] = JOB_MOVES
    __table_args__ = (
        Index(None, "status", "created"),
        CheckConstraint("priority BETWEEN 0 AND 9", name="priority_range"),
        Index(None, "project_id", "created"),  # a team's jobs, newest first
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_job_id)
    # What people call the job (the story's title, or its character and date); downloads are
    # named after it (farm/job_names.py). Empty only for a row made by hand, without plan_job.
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), default="")
    character_id: Mapped[int] = mapped_column(ForeignKey("characters.id"), index=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), default=_IN_DEFAULT_PROJECT)
    # Set on the fast, low-resolution job that renders the preview of a job submitted with
    # `approval: preview`: the job it is the preview of (farm/approval.py).
    preview_of: Mapped[str | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), index=True
    )
    status: Mapped[JobStatus] = _status_column(JobStatus.QUEUED)
    preset: Mapped[str] = mapped_column(String(64))
    # Celery's range; the middle by default, so that a submission can go either way.
    priority: Mapped[int] = mapped_column(server_default=text("5"))
    spec: Mapped[dict[str, Any]]  # the current revision's story
    renders_total: Mapped[int]
    # The story's revision the job is at: 1 as submitted, one more for each `farm revise`
    # (farm/revisions.py); the stories of all revisions are in `job_revisions`.
    revision: Mapped[int] = mapped_column(server_default=text("1"))
    webhook_url: Mapped[str | None] = mapped_column(String(2048))
    error: Mapped[str | None] = mapped_column(Text)
    started: Mapped[datetime | None]
    finished: Mapped[datetime | None]
    cancel_requested: Mapped[bool] = mapped_column(server_default=false())
    # The job ended and its finalize task (comic, exports, webhook) is not sent yet: set in the
    # transaction that ends it, cleared once the broker took the task (farm/queue/outbox.py).
    finalize_pending: Mapped[bool] = mapped_column(server_default=false(), index=True)
    # Optimistic locking: workers on SQLite cannot lock rows, so two that race to change the
    # same job or shard are told (StaleDataError) instead of one silently undoing the other.
    version: Mapped[int] = mapped_column(server_default=text("1"))
    __mapper_args__ = {"eager_defaults": True, "version_id_col": version}  # noqa: RUF012

    character: Mapped[Character] = relationship(lazy="raise_on_sql")
    shards: Mapped[list[Shard]] = relationship(
        back_populates="job",
        order_by="Shard.index",
        cascade="all, delete-orphan",
        passive_deletes=True,
        lazy="raise_on_sql",
    )
    renders: Mapped[list[Render]] = relationship(
        back_populates="job",
        order_by="[Render.scene_index, Render.variant]",
        cascade="all, delete-orphan",
        passive_deletes=True,
        lazy="raise_on_sql",
    )

    def start(self, now: datetime | None = None) -> None:
        """Mark the job running when its first shard starts; later shards leave it as it is."""
        if self.status is JobStatus.RUNNING:
            return
        _move(self, "start")
        self.started = now or utcnow()

    def succeed(self, now: datetime | None = None) -> None:
        _move(self, "succeed")
        self.finished = now or utcnow()

    def fail(self, error: str, now: datetime | None = None) -> None:
        _move(self, "fail")
        self.error = error
        self.finished = now or utcnow()

    def request_cancel(self) -> None:
        """Ask the workers to stop: they check the flag before each shard and between renders."""
        if self.status not in JOB_MOVES["cancel"].sources:
            raise TransitionError(f"Job {self.id} is {self.status}; there is nothing to cancel")
        self.cancel_requested = True

    def cancel(self, now: datetime | None = None) -> None:
        _move(self, "cancel")
        self.cancel_requested = True
        self.finished = now or utcnow()

    def approve(self) -> None:
        """Scenes of a job awaiting approval were approved: it is queued for them."""
        _move(self, "approve")

    def await_approval(self) -> None:
        """The approved scenes are rendered and others remain: it waits, holding no GPU."""
        _move(self, "await")

    def reopen(self) -> None:
        """A retry of an ended job: it runs again, for the shards sent again."""
        _move(self, "reopen")
        self.cancel_requested = False
        self.finalize_pending = False  # the end it was for no longer stands
        self.error = None
        self.finished = None

    def pause(self) -> None:
        """Hold the job back: its queued shards wait, its running ones stop at their next batch."""
        _move(self, "pause")

    def resume(self) -> None:
        """Back to where it was before the pause: running once a shard of it has started."""
        _move(self, "resume" if self.started is not None else "resume_unstarted")


class Shard(Timestamps, Base):
    """A few renders of a job, run as one Celery task under a lease.

    Every start counts as an attempt, whoever started it (a first delivery, a redelivery after
    a worker died, a requeue by the reaper), so a shard that always kills its worker ends
    failed after `max_attempts` instead of circling forever.
    """

    __tablename__ = "shards"
    MOVES: ClassVar[Mapping[str, Move]] = SHARD_MOVES
    __table_args__ = (
        UniqueConstraint("job_id", "index"),
        Index(None, "status", "lease_expires"),
        Index(None, "status", "sent"),  # the outbox: queued shards whose task was never sent
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    index: Mapped[int]
    status: Mapped[ShardStatus] = _status_column(ShardStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(server_default=text("0"))
    max_attempts: Mapped[int] = mapped_column(server_default=text("3"))
    lease_expires: Mapped[datetime | None]
    # Plain text, not keys into `workers`: the history outlives the worker rows.
    worker_id: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    task_id: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    started: Mapped[datetime | None]
    finished: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    # When its task was last handed to the broker; None while a queued shard waits to be sent
    # (see farm/queue/outbox.py). Written with the shard, so a send that fails loses nothing.
    sent: Mapped[datetime | None]
    # Runs that ended because their worker was told to stop (preemption, scale-down, drain):
    # not attempts, so a job on spot machines is not failed by them. A run interrupted in the
    # middle of denoising left its batch's latents and sampler state at `checkpoint_key`, from
    # `checkpoint_step` on (farm/render/checkpoint.py); the next run resumes there.
    interruptions: Mapped[int] = mapped_column(server_default=text("0"))
    checkpoint_key: Mapped[str | None] = mapped_column(String(KEY_LENGTH))
    checkpoint_step: Mapped[int | None]
    version: Mapped[int] = mapped_column(server_default=text("1"))  # see Job.version
    __mapper_args__ = {"eager_defaults": True, "version_id_col": version}  # noqa: RUF012

    job: Mapped[Job] = relationship(back_populates="shards", lazy="raise_on_sql")
    renders: Mapped[list[Render]] = relationship(
        back_populates="shard",
        order_by="[Render.scene_index, Render.variant]",
        passive_deletes=True,
        lazy="raise_on_sql",
    )

    @property
    def attempts_left(self) -> int:
        return max(self.max_attempts - self.attempts, 0)

    def start(
        self,
        worker_id: str,
        lease_s: float,
        *,
        task_id: str | None = None,
        now: datetime | None = None,
    ) -> None:
        """Claim the shard for `worker_id` until `lease_s` from now.

        A running shard may be started again: that is a redelivered task taking over from a
        worker that died; the caller has checked, under a row lock, that the lease expired.
        """
        if not self.attempts_left:
            raise TransitionError(
                f"Shard {self.id} has used all {self.max_attempts} attempts; fail it instead"
            )
        _move(self, "start")
        now = now or utcnow()
        self.attempts += 1
        self.worker_id = worker_id
        self.task_id = task_id
        self.lease_expires = now + timedelta(seconds=lease_s)
        self.started = now
        self.finished = None
        self.error = None

    def renew(self, lease_s: float, now: datetime | None = None) -> None:
        """Extend the lease: the worker's heartbeat while the shard renders."""
        _move(self, "renew")
        self.lease_expires = (now or utcnow()) + timedelta(seconds=lease_s)

    def requeue(self, reason: str, now: datetime | None = None) -> ShardStatus:
        """Give the shard back (expired lease, warm shutdown); fail it when no attempt is left.

        Returns the new status, so that the caller knows whether to send the task again.
        """
        if self.attempts_left:
            _move(self, "requeue")
            self.error = reason
            self.worker_id = None
            self.lease_expires = None
            self.sent = None  # for the outbox: its task goes out again
        else:
            self.fail(f"{reason} (attempt {self.attempts} of {self.max_attempts})", now)
        return self.status

    def interrupt(
        self, reason: str, checkpoint_key: str | None = None, checkpoint_step: int | None = None
    ) -> None:
        """Give the shard back because its worker was told to stop: the run that started it
        is not counted as an attempt, and the next one resumes from the checkpoint, if any."""
        _move(self, "interrupt")
        self.attempts = max(self.attempts - 1, 0)
        self.interruptions += 1
        self.error = reason
        self.worker_id = None
        self.lease_expires = None
        self.sent = None  # for the outbox: its task goes out again
        self.checkpoint_key = checkpoint_key
        self.checkpoint_step = checkpoint_step

    def succeed(self, now: datetime | None = None) -> None:
        _move(self, "succeed")
        self._end(now)

    def fail(self, error: str, now: datetime | None = None) -> None:
        _move(self, "fail")
        self.error = error
        self._end(now)

    def cancel(self, now: datetime | None = None) -> None:
        _move(self, "cancel")
        self._end(now)

    def reopen(self) -> None:
        """A manual retry (`farm retry`): the shard gets a fresh set of attempts."""
        _move(self, "reopen")
        self.attempts = 0
        self.worker_id = None
        self.finished = None
        self.sent = None

    def pause(self) -> None:
        """Its job was paused. A running shard pauses once its worker has stopped it between
        batches: that run was cut short by a producer, not by a fault, so it is no attempt."""
        if self.status is ShardStatus.RUNNING:
            self.attempts = max(self.attempts - 1, 0)
        _move(self, "pause")
        self.worker_id = None
        self.lease_expires = None
        self.sent = None

    def resume(self) -> None:
        """Its job was resumed: queued again, and its task is sent again (the outbox)."""
        _move(self, "resume")
        self.sent = None

    def _end(self, now: datetime | None) -> None:
        self.finished = now or utcnow()
        self.lease_expires = None
        self.checkpoint_key = None  # an ended shard resumes nothing
        self.checkpoint_step = None


class Render(Timestamps, Base):
    """One image: a scene x variant of a job's current revision, with what it took to make and
    where it lies. Renders a revision dropped move to `retired_renders`."""

    __tablename__ = "renders"
    MOVES: ClassVar[Mapping[str, Move]] = RENDER_MOVES
    __table_args__ = (
        UniqueConstraint("job_id", "scene_index", "variant"),
        # Progress is one GROUP BY status over a job's rows, found through this index.
        Index(None, "job_id", "status"),
        Index(None, "content_hash"),  # the finished renders a new job may reuse
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    # None for a render reused from another one: it was never rendered in this job.
    shard_id: Mapped[int | None] = mapped_column(
        ForeignKey("shards.id", ondelete="CASCADE"), index=True
    )
    scene_index: Mapped[int]
    variant: Mapped[int]
    seed: Mapped[int] = mapped_column(BigInteger)  # up to 2**32 - 1, past a signed INTEGER
    prompt: Mapped[str] = mapped_column(Text)
    negative: Mapped[str] = mapped_column(Text)
    caption: Mapped[str | None] = mapped_column(Text)
    status: Mapped[RenderStatus] = _status_column(RenderStatus.QUEUED)
    storage_key: Mapped[str | None] = mapped_column(String(KEY_LENGTH))
    thumb_key: Mapped[str | None] = mapped_column(String(KEY_LENGTH))
    worker_id: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    device: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    identity_s: Mapped[float | None]
    denoise_s: Mapped[float | None]
    decode_s: Mapped[float | None]
    upload_s: Mapped[float | None]
    # What the render held its device for, from the start of its batch to its image: its share
    # of the batch and of the shard's identity encoding, plus its QC re-renders; never the
    # model load. The kind is the device's make ("NVIDIA H200", "cpu"), what a studio bills by.
    device_s: Mapped[float | None]
    device_kind: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    error: Mapped[str | None] = mapped_column(Text)
    face_similarity: Mapped[float | None]
    # Identity QC: renders made again because their face was too far from the character's;
    # qc_seed is the seed of the image kept, when it is not `seed`.
    qc_retries: Mapped[int] = mapped_column(server_default=text("0"))
    qc_seed: Mapped[int | None] = mapped_column(BigInteger)
    # The denoising step a running render's batch has reached, of its `steps` (a fast
    # preset's, not the story's): progress between a batch's start and its end.
    steps_done: Mapped[int] = mapped_column(server_default=text("0"))
    steps: Mapped[int | None]
    attempts: Mapped[int] = mapped_column(server_default=text("0"))
    started: Mapped[datetime | None]
    finished: Mapped[datetime | None]
    # Everything that decides the pixels (farm/render_hash.py), and the same without the seed:
    # the scene's recipe, shared by all its variants. None on rows older than both.
    content_hash: Mapped[str | None] = mapped_column(String(HASH_LENGTH))
    scene_hash: Mapped[str | None] = mapped_column(String(HASH_LENGTH))
    revision: Mapped[int] = mapped_column(server_default=text("1"))  # the one that made it
    # The variant a person chose for the scene's comic panel (farm/picks.py); at most one per
    # scene. With none, the comic takes the best face, else the first variant.
    picked: Mapped[bool] = mapped_column(server_default=false())
    # A render reused by content hash: the job whose render made these pixels (this one's,
    # in an earlier revision, or another job of the project). Not a key: history outlives it.
    reused_from_job: Mapped[str | None] = mapped_column(String(36))

    job: Mapped[Job] = relationship(back_populates="renders", lazy="raise_on_sql")
    shard: Mapped[Shard] = relationship(back_populates="renders", lazy="raise_on_sql")

    def start(self, worker_id: str, device: str, now: datetime | None = None) -> None:
        """Begin rendering; a running render was left by a dead worker, a failed one is retried."""
        _move(self, "start")
        self.attempts += 1
        self.worker_id = worker_id
        self.device = device
        self.started = now or utcnow()
        self.finished = None
        self.error = None

    def finish(
        self,
        storage_key: str,
        thumb_key: str | None = None,
        *,
        identity_s: float | None = None,
        denoise_s: float | None = None,
        decode_s: float | None = None,
        upload_s: float | None = None,
        face_similarity: float | None = None,
        qc_retries: int = 0,
        qc_seed: int | None = None,
        device_s: float | None = None,
        device_kind: str | None = None,
        now: datetime | None = None,
    ) -> None:
        _move(self, "finish")
        self.storage_key = storage_key
        self.thumb_key = thumb_key
        self.identity_s = identity_s
        self.denoise_s = denoise_s
        self.decode_s = decode_s
        self.upload_s = upload_s
        self.face_similarity = face_similarity
        self.qc_retries = qc_retries
        self.qc_seed = qc_seed
        self.device_s = device_s
        self.device_kind = device_kind
        self.finished = now or utcnow()

    def fail(self, error: str, now: datetime | None = None) -> None:
        _move(self, "fail")
        self.error = error
        self.finished = now or utcnow()

    def cancel(self, now: datetime | None = None) -> None:
        _move(self, "cancel")
        self.finished = now or utcnow()

    def reuse(
        self,
        storage_key: str,
        thumb_key: str | None,
        *,
        source_job: str,
        face_similarity: float | None = None,
        qc_seed: int | None = None,
        now: datetime | None = None,
    ) -> None:
        """Finish a queued render with the image of another render of the same content hash
        (farm/reuse.py): it is never rendered here, so it has no shard, worker or timings."""
        _move(self, "reuse")
        self.shard_id = None
        self.storage_key = storage_key
        self.thumb_key = thumb_key
        self.face_similarity = face_similarity
        self.qc_seed = qc_seed
        self.reused_from_job = source_job
        self.finished = now or utcnow()

    def reopen(self) -> None:
        """A manual retry: the render waits for its shard's next attempt."""
        _move(self, "reopen")
        self.error = None
        self.finished = None

    def interrupt(self) -> None:
        """Its worker was told to stop mid-batch: the render waits for its shard's next run."""
        _move(self, "interrupt")


class JobRevision(Timestamps, Base):
    """One revision of a job's story: what it asked for, and what it cost (renders kept from
    the revision before, reused from elsewhere by content hash, rendered, and retired)."""

    __tablename__ = "job_revisions"
    __table_args__ = (UniqueConstraint("job_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    number: Mapped[int]
    spec: Mapped[dict[str, Any]]
    summary: Mapped[str] = mapped_column(Text)  # "scene 3: prompt changed; scene 7 added"
    kept: Mapped[int] = mapped_column(server_default=text("0"))
    reused: Mapped[int] = mapped_column(server_default=text("0"))
    rendered: Mapped[int] = mapped_column(server_default=text("0"))
    retired: Mapped[int] = mapped_column(server_default=text("0"))


class RetiredRender(Timestamps, Base):
    """A render a revision of its job dropped (its scene removed or changed): kept, with its
    image, for the job's history and for reuse when a later revision asks for it again."""

    __tablename__ = "retired_renders"
    __table_args__ = (Index(None, "job_id", "revision"), Index(None, "content_hash"))

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    revision: Mapped[int]  # the revision that made it
    retired_in: Mapped[int]  # the first revision without it
    scene_index: Mapped[int]
    variant: Mapped[int]
    seed: Mapped[int] = mapped_column(BigInteger)
    prompt: Mapped[str] = mapped_column(Text)
    negative: Mapped[str] = mapped_column(Text)
    caption: Mapped[str | None] = mapped_column(Text)
    content_hash: Mapped[str | None] = mapped_column(String(HASH_LENGTH))
    storage_key: Mapped[str] = mapped_column(String(KEY_LENGTH))
    thumb_key: Mapped[str | None] = mapped_column(String(KEY_LENGTH))
    face_similarity: Mapped[float | None]
    qc_seed: Mapped[int | None] = mapped_column(BigInteger)


class WorkerFailures(Timestamps, Base):
    """The shards of one job that one worker failed: at `BLOCKLIST_AFTER` the worker is kept
    off that job (a soft-fail blocklist, as render managers keep one), since a worker that
    fails a job twice (a bad driver, a card short of memory for it) would fail it again and
    spend the shards' attempts that a sound worker would have used."""

    __tablename__ = "job_worker_failures"
    __table_args__ = (UniqueConstraint("job_id", "worker_id"),)
    BLOCKLIST_AFTER: ClassVar[int] = 2

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    worker_id: Mapped[str] = mapped_column(String(NAME_LENGTH))  # text: outlives the worker row
    failures: Mapped[int] = mapped_column(server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)


_LIVE_WORKER = WORKER_MOVES["stop"].sources


class Worker(Timestamps, Base):
    """One worker process on one GPU, as it last reported itself."""

    __tablename__ = "workers"
    MOVES: ClassVar[Mapping[str, Move]] = WORKER_MOVES

    id: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)  # "host:cuda0"
    hostname: Mapped[str] = mapped_column(String(NAME_LENGTH))
    device: Mapped[str] = mapped_column(String(NAME_LENGTH))
    presets: Mapped[list[str]]
    status: Mapped[WorkerStatus] = _status_column(WorkerStatus.STARTING)
    current_shard_id: Mapped[int | None] = mapped_column(
        ForeignKey("shards.id", ondelete="SET NULL")
    )
    last_heartbeat: Mapped[datetime] = mapped_column(server_default=sql_now())
    renders_done: Mapped[int] = mapped_column(server_default=text("0"))
    renders_failed: Mapped[int] = mapped_column(server_default=text("0"))
    started: Mapped[datetime] = mapped_column(server_default=sql_now())

    def beat(self, now: datetime | None = None) -> None:
        """Record that the process is alive; a worker marked lost or stopped must re-register."""
        if self.status not in _LIVE_WORKER:
            raise TransitionError(f"Worker {self.id} is {self.status}; it must register again")
        self.last_heartbeat = now or utcnow()

    def ready(self, now: datetime | None = None) -> None:
        """The pipeline is loaded: the worker takes work from now on."""
        _move(self, "ready")
        self.beat(now)

    def take(self, shard_id: int, now: datetime | None = None) -> None:
        _move(self, "take")
        self.current_shard_id = shard_id
        self.beat(now)

    def release(self, *, done: int, failed: int, now: datetime | None = None) -> None:
        """The shard is over; a draining worker stays draining, on its way out."""
        if self.status is not WorkerStatus.DRAINING:
            _move(self, "release")
        self.current_shard_id = None
        self.renders_done += done
        self.renders_failed += failed
        self.beat(now)

    def drain(self, now: datetime | None = None) -> None:
        """Finish the current shard, take no new one (warm shutdown, scale-down)."""
        _move(self, "drain")
        self.beat(now)

    def resume(self, now: datetime | None = None) -> None:
        """Take work again after a drain (`farm resume`)."""
        _move(self, "resume")
        self.beat(now)

    def stop(self) -> None:
        _move(self, "stop")
        self.current_shard_id = None

    def lose(self) -> None:
        """The reaper's verdict on a worker whose heartbeats stopped; its shard is requeued."""
        _move(self, "lose")
        self.current_shard_id = None


class ReaperRun(Timestamps, Base):
    """The reaper's last scheduled run: one row per farm, which every run overwrites.

    Nothing else shows a reaper that stopped (its beat died, no worker takes the control queue)
    until a dead worker's shards sit unrequeued; `farm workers` and `/readyz` read this row
    (farm/queue/beat.py). `interval_s` is the schedule the run was made on, so a reader judges
    staleness by the reaper's own interval, not by its own settings.
    """

    __tablename__ = "reaper_runs"

    id: Mapped[int] = mapped_column(primary_key=True)  # always 1
    last_run: Mapped[datetime]
    worker_id: Mapped[str] = mapped_column(String(NAME_LENGTH))  # the worker that ran it
    interval_s: Mapped[int]


class Role(StrEnum):
    """What a token or an account may do; each role may do all that the ones before it may."""

    VIEWER = "viewer"  # read characters, jobs, renders and the farm
    ARTIST = "artist"  # also create characters, submit, cancel and retry jobs
    ADMIN = "admin"  # also manage the project's tokens and accounts, and the workers

    def allows(self, needed: Role) -> bool:
        order = list(Role)
        return order.index(self) >= order.index(needed)


def _role_column() -> Any:
    return mapped_column(
        Enum(
            Role,
            name="role",
            native_enum=False,
            create_constraint=True,
            length=20,
            values_callable=lambda members: [member.value for member in members],
            validate_strings=True,
        )
    )


class Project(Timestamps, Base):
    """A studio team: its characters and jobs are seen and touched by its own people only.

    It also holds the team's share of the farm (farm/scheduling.py): while several projects
    have work queued, free workers go to each in proportion to `share_weight`, and never to
    more than `max_running_shards` of its shards at once. `share_pass` is how far it has been
    served, in shards over weight: the project furthest behind is served next.
    """

    __tablename__ = "projects"
    __table_args__ = (
        CheckConstraint("share_weight > 0", name="share_weight_positive"),
        CheckConstraint(
            "max_running_shards IS NULL OR max_running_shards > 0", name="max_running_positive"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80), unique=True)
    share_weight: Mapped[float] = mapped_column(server_default=text("1"))
    max_running_shards: Mapped[int | None]
    share_pass: Mapped[float] = mapped_column(server_default=text("0"))


def project_or_default(project_id: int | None) -> Any:
    """The project a new row goes to: the one named, or else the default project (as SQL)."""
    return _IN_DEFAULT_PROJECT if project_id is None else project_id


class ApiToken(Timestamps, Base):
    """A bearer token of one project and role. Only the sha256 of the secret is kept: a token is
    random and long, so a plain hash resists guessing, and a leaked table yields no token."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    name: Mapped[str] = mapped_column(String(80))  # what it is for: "ci pipeline", "alice"
    role: Mapped[Role] = _role_column()
    prefix: Mapped[str] = mapped_column(String(16))  # the secret's start, to recognise it by
    secret_sha256: Mapped[str] = mapped_column(String(HASH_LENGTH), unique=True)
    last_used: Mapped[datetime | None]  # written at most once a minute (farm/auth.py)
    revoked: Mapped[datetime | None]
    expires: Mapped[datetime | None]  # None: until revoked
    # Bumped by a logout: dashboard sessions opened with the token carry the number they were
    # opened under, and one that no longer matches has ended (a saved cookie stops working).
    session_generation: Mapped[int] = mapped_column(default=0, server_default=text("0"))

    def revoke(self, now: datetime | None = None) -> None:
        """Refuse the token from now on; the row stays, so its history can still be read."""
        if self.revoked is None:
            self.revoked = now or utcnow()

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires is not None and self.expires <= (now or utcnow())


class Account(Timestamps, Base):
    """A person who logs in to the dashboard with a password, in one project with one role."""

    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    username: Mapped[str] = mapped_column(String(80), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))  # scrypt, see farm.auth
    role: Mapped[Role] = _role_column()
    last_login: Mapped[datetime | None]
    disabled: Mapped[datetime | None]
    session_generation: Mapped[int] = mapped_column(default=0, server_default=text("0"))

    def disable(self, now: datetime | None = None) -> None:
        if self.disabled is None:
            self.disabled = now or utcnow()
