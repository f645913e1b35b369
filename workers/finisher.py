"""Storing and recording renders beside the device, in one thread per worker process.

Scoring, encoding, the uploads and the SQL of a batch need no device and wait mostly on the
network and the database; done in line they would leave the device idle. So the render thread
hands each batch to the finisher and renders the next one meanwhile, within a shard and across
shards: a shard's task returns once its last batch is rendered, and the finisher ends the shard
(SQL, events, the job's end) after storing that batch, while the next shard renders. From the
task's return to the shard's end the shard's SQL lease guards it, as it guards a running shard:
the heartbeat renews it, and a worker that dies meanwhile leaves it to the reaper, whose rerun
skips the renders already recorded.

Steps run one at a time, in the order they were queued, so a shard ends only after its batches
are recorded. One batch waits at most, so memory stays bounded, and a store that fails (S3
down past its retries) stops its shard one batch later at the latest.
"""

from __future__ import annotations

import contextvars
import io
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field, replace
from typing import TypeVar

from PIL import Image

from farm.context import Farm
from farm.db.models import DEFAULT_PROJECT
from farm.jobs import render_key, thumb_key
from farm.lifecycle import finish_renders
from farm.logs import log_context
from farm.metrics import record_device_seconds, record_render
from farm.recipe import RenderSettings, png_bytes
from farm.story import PlannedRender
from workers.cores import unpin_thread
from workers.qc import Checked, IdentityCheck

log = logging.getLogger(__name__)

THUMB_SIZE = 256
UPLOADS_AT_ONCE = 8  # a batch's renders, each a PNG and a thumbnail
T = TypeVar("T")


@dataclass
class Tally:
    """The shard's renders done and failed, counted as they happen: a shard cut short (a
    cancel, an error) still credits its worker with the renders it finished."""

    done: int = 0
    failed: int = 0


@dataclass
class ShardRun:
    """A claimed shard as the finisher sees it: what storing its renders needs, and how it went."""

    shard_id: int
    job_id: str
    preset: str
    settings: RenderSettings
    revision: int = 1  # of the job's story, which made the shard's renders: part of their keys
    project: str = DEFAULT_PROJECT  # the job's project's name: the device seconds' label
    device_kind: str | None = None  # the make of the worker's device (farm/accounting.py)
    tally: Tally = field(default_factory=Tally)
    # The first batch that could not be stored: it stops the shard, and ends it with its error.
    store_error: Exception | None = None


@dataclass(frozen=True)
class Rendered:
    """A render made, waiting to be scored (unless its identity check ran already), stored and
    recorded: the last of a render's three shapes (planned, row, rendered) before its PNG."""

    render_id: int
    planned: PlannedRender
    image: Image.Image
    checked: Checked | None
    identity_s: float
    denoise_s: float | None
    decode_s: float | None
    device_s: float | None = None  # see Render.device_s


class Finisher:
    """The worker's storing thread, fed by its render thread (the only caller)."""

    def __init__(self, farm: Farm) -> None:
        self.farm = farm
        self._steps = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="finisher", initializer=unpin_thread
        )
        # A batch's uploads go out side by side: each waits on S3's latency, not on a core.
        self._uploads = ThreadPoolExecutor(
            max_workers=UPLOADS_AT_ONCE, thread_name_prefix="upload", initializer=unpin_thread
        )
        self._last: Future | None = None

    def store(self, run: ShardRun, check: IdentityCheck, rendered: list[Rendered]) -> None:
        """Queue a batch, once the one before it is stored; raises the error of a batch of this
        shard that could not be stored, which stops the shard. `check` scores the renders
        whose identity check did not run already."""
        self._wait()
        if run.store_error is not None:
            raise run.store_error
        self._last = self._queue(self._store_batch, run, check, rendered)

    def then(self, step: Callable[[], T]) -> Future[T]:
        """Run `step` once everything queued before it is done; returns at once."""
        future = self._last = self._queue(step)
        return future

    def _wait(self) -> None:
        """Until everything queued is done. Errors stay with their steps' futures: a shard that
        ended badly must not fail the next one."""
        if self._last is not None:
            wait_for([self._last])

    def close(self) -> None:
        """Finish what is queued, then stop: a worker shutting down ends its shards first."""
        self._steps.shutdown(wait=True)
        self._uploads.shutdown(wait=True)

    def _queue(self, step: Callable[..., T], *args: object) -> Future[T]:
        # In the caller's log context: the finisher's lines carry the job and shard ids too.
        return self._steps.submit(contextvars.copy_context().run, step, *args)

    def _store_batch(self, run: ShardRun, check: IdentityCheck, rendered: list[Rendered]) -> None:
        if run.store_error is not None:  # the shard stops: its later batches are not stored
            return
        try:
            uploads = [
                self._uploads.submit(contextvars.copy_context().run, self._upload, run, item)
                for item in rendered
            ]
            # Scored while the uploads wait on S3, one after the other: face models are not
            # safe to share between threads. What is stored does not depend on a score it
            # cannot retry.
            checked = [item.checked or _scored(check, item) for item in rendered]
            upload_s = [upload.result() for upload in uploads]  # the first error, raised here
            self._record(run, rendered, checked, upload_s)
        except Exception as error:
            log.exception("job %s: a batch of shard %s was not stored", run.job_id, run.shard_id)
            run.store_error = error

    def _upload(self, run: ShardRun, item: Rendered) -> float:
        """Store the render's PNG and thumbnail; returns the seconds it took."""
        started = time.perf_counter()
        planned = item.planned
        image, seed = (
            (item.checked.image, item.checked.seed) if item.checked else (item.image, planned.seed)
        )
        key, thumb = _keys(run, item)
        with log_context(render=item.render_id):
            png = png_bytes(image, replace(planned, seed=seed), run.settings)
            self.farm.storage.put(key, png, "image/png")
            self.farm.storage.put(thumb, _thumbnail(image), "image/webp")
        return time.perf_counter() - started

    def _record(
        self,
        run: ShardRun,
        rendered: list[Rendered],
        scores: list[Checked],
        upload_s: list[float],
    ) -> None:
        """One transaction for the batch's rows, then the counts, metrics and events."""
        finished = {}
        for item, checked, uploaded in zip(rendered, scores, upload_s, strict=True):
            key, thumb = _keys(run, item)
            finished[item.render_id] = {
                "storage_key": key,
                "thumb_key": thumb,
                "identity_s": item.identity_s,
                "denoise_s": item.denoise_s,
                "decode_s": item.decode_s,
                "upload_s": uploaded,
                "face_similarity": checked.similarity,
                "qc_retries": checked.retries,
                "qc_seed": checked.seed if checked.seed != item.planned.seed else None,
                "device_s": item.device_s,
                "device_kind": run.device_kind,
            }
        with self.farm.sessions.begin() as session:
            finish_renders(session, finished)
        run.tally.done += len(rendered)
        for item, uploaded in zip(rendered, upload_s, strict=True):
            key, thumb = _keys(run, item)
            record_render(
                run.preset,
                done=True,
                phases={
                    "identity": item.identity_s,
                    "denoise": item.denoise_s,
                    "decode": item.decode_s,
                    "upload": uploaded,
                },
            )
            record_device_seconds(run.project, run.preset, run.device_kind, item.device_s)
            self.farm.events.publish(
                run.job_id,
                "render.done",
                render=item.render_id,
                scene=item.planned.scene_index,
                variant=item.planned.variant,
                key=key,
                thumb=thumb,
            )


def _keys(run: ShardRun, item: Rendered) -> tuple[str, str]:
    """Where a render's PNG and thumbnail go: fixed by its place in the job, so a rerun of
    the shard overwrites them."""
    planned = item.planned
    return (
        render_key(run.job_id, planned.scene_index, planned.variant, run.revision),
        thumb_key(run.job_id, planned.scene_index, planned.variant, run.revision),
    )


def _scored(check: IdentityCheck, item: Rendered) -> Checked:
    with log_context(render=item.render_id):
        return check.scored(item.image, item.planned)


def _thumbnail(image: Image.Image) -> bytes:
    copy = image.copy()
    copy.thumbnail((THUMB_SIZE, THUMB_SIZE))
    buffer = io.BytesIO()
    copy.save(buffer, format="WEBP", quality=85)
    return buffer.getvalue()
