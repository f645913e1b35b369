"""`run_shard` in this process with the tiny preset: what a worker's task does to SQL and storage.

Celery may deliver a shard twice and workers die, so beyond the happy path these tests check
that a second delivery does nothing, that a cancel or exhausted attempts end a shard without
rendering, and that a scene which can never render fails alone.
"""

from __future__ import annotations

import io
import json
import threading
import time
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from PIL import Image

from farm.context import Farm
from farm.db.models import Job, Render, Shard, Worker
from farm.db.states import JobStatus, RenderStatus, ShardStatus
from farm.db.types import utcnow
from farm.jobs import render_key, thumb_key
from farm.lifecycle import cancel_job
from farm.queue.app import FINALIZE_JOB, RENDER_SHARD
from farm.recipe import RECIPE_CHUNK
from farm.render.loading import LoadedPreset
from farm.story import Story
from tests.farm.conftest import job_rows, make_story, submit
from workers.runtime import WorkerRuntime
from workers.shard import run_shard

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAME = "testhost:cpu0"
DEAD = "gone:cuda0"
# Eighty words before the class word: its identity tokens would fall past CLIP's 77.
TOO_LONG = "very " * 80 + "old man img"


def runtime_with(farm: Farm, loaded: LoadedPreset) -> WorkerRuntime:
    runtime = WorkerRuntime(farm, NAME, "cpu", ["tiny"], {"tiny": loaded})
    runtime.register()
    return runtime


@pytest.fixture
def runtime(farm: Farm, tiny: LoadedPreset) -> WorkerRuntime:
    return runtime_with(farm, tiny)


def with_batch_size(loaded: LoadedPreset, batch_size: int, **changes: Any) -> LoadedPreset:
    return replace(loaded, preset=replace(loaded.preset, batch_size=batch_size), **changes)


def worker_counts(farm: Farm) -> tuple[int, int, int | None]:
    with farm.sessions() as session:
        worker = session.get(Worker, NAME)
        return worker.renders_done, worker.renders_failed, worker.current_shard_id


def test_queued_shards_render_and_the_last_one_ends_the_job(farm, faces, runtime):
    submitted = submit(farm, faces, make_story(3))
    job_id = submitted.job_id
    _, shards, _ = job_rows(farm, job_id)

    assert run_shard(runtime, shards[0].id, "task-1").result() == "succeeded"

    job, shards, renders = job_rows(farm, job_id)
    assert job.status is JobStatus.RUNNING and job.started is not None  # shard 1 is queued
    assert shards[0].status is ShardStatus.SUCCEEDED and shards[0].task_id == "task-1"
    assert (shards[0].attempts, shards[0].worker_id, shards[0].lease_expires) == (1, NAME, None)
    for render in renders[:2]:
        assert render.status is RenderStatus.DONE
        assert render.storage_key == render_key(job_id, render.scene_index, render.variant)
        assert render.thumb_key == thumb_key(job_id, render.scene_index, render.variant)
        assert (render.worker_id, render.device, render.attempts) == (NAME, "cpu", 1)
        assert None not in (render.identity_s, render.denoise_s, render.decode_s, render.upload_s)
        assert render.finished is not None
        with Image.open(io.BytesIO(farm.storage.get(render.storage_key))) as png:
            assert (png.format, png.size) == ("PNG", (64, 64))
            assert json.loads(png.text[RECIPE_CHUNK])["seed"] == render.seed
        with Image.open(io.BytesIO(farm.storage.get(render.thumb_key))) as thumb:
            assert thumb.format == "WEBP"
    assert renders[2].status is RenderStatus.QUEUED
    assert worker_counts(farm) == (2, 0, None)

    assert run_shard(runtime, shards[1].id).result() == "succeeded"
    job, _, renders = job_rows(farm, job_id)
    assert job.status is JobStatus.SUCCEEDED and job.finished is not None
    assert {r.status for r in renders} == {RenderStatus.DONE}
    assert sorted(farm.storage.list("jobs/")) == sorted(
        [r.storage_key for r in renders] + [r.thumb_key for r in renders]
    )


def test_a_worker_validates_a_jobs_story_once_per_revision(farm, faces, runtime, monkeypatch):
    """Every shard claims with the job's story; a 10,000-scene one is megabytes to read and
    validate, so a worker does it once per revision of the story, not once per shard."""
    validated: list[int] = []
    validate = Story.model_validate

    def counted(data: Any, **kwargs: Any) -> Story:
        validated.append(len(data["scenes"]))
        return validate(data, **kwargs)

    job_id = submit(farm, faces, make_story(6)).job_id
    _, shards, _ = job_rows(farm, job_id)
    monkeypatch.setattr(Story, "model_validate", counted)
    assert run_shard(runtime, shards[0].id).result() == "succeeded"
    assert run_shard(runtime, shards[1].id).result() == "succeeded"
    assert validated == [6]

    with farm.sessions.begin() as session:  # a revision is the one way a story changes
        session.get_one(Job, job_id).revision += 1
    assert run_shard(runtime, shards[2].id).result() == "succeeded"
    assert validated == [6, 6]


def test_a_second_delivery_does_nothing(farm, faces, runtime):
    submitted = submit(farm, faces, make_story(1))
    _, (shard,), _ = job_rows(farm, submitted.job_id)
    run_shard(runtime, shard.id).result()
    _, shards_before, renders_before = job_rows(farm, submitted.job_id)
    stored = {key: farm.storage.get(key) for key in farm.storage.list("jobs/")}

    assert run_shard(runtime, shard.id).result() == "already succeeded"

    _, shards, renders = job_rows(farm, submitted.job_id)
    assert (shards[0].attempts, shards[0].version) == (
        shards_before[0].attempts,
        shards_before[0].version,
    )
    assert [(r.attempts, r.finished) for r in renders] == [
        (r.attempts, r.finished) for r in renders_before
    ]
    assert {key: farm.storage.get(key) for key in farm.storage.list("jobs/")} == stored
    assert worker_counts(farm) == (1, 0, None)


def leave_to_a_dead_worker(farm: Farm, shard_id: int, starts: int) -> None:
    """`starts` claims by a worker that died: the shard is running under an expired lease."""
    long_ago = utcnow() - timedelta(hours=1)
    with farm.sessions.begin() as session:
        shard = session.get(Shard, shard_id)
        for _ in range(starts):
            shard.start(DEAD, farm.settings.lease_s, now=long_ago)
        session.get(Job, shard.job_id).start(long_ago)


def close_at_claim(farm: Farm, faces: Any, how: str) -> tuple[str, int]:
    """A one-shard job whose shard a worker's claim must end without rendering it."""
    job_id = submit(farm, faces, make_story(2)).job_id
    _, (shard,), _ = job_rows(farm, job_id)
    if how == "cancelled":
        leave_to_a_dead_worker(farm, shard.id, starts=1)
        cancel_job(farm, job_id)  # the shard is running: the job waits, flagged
    else:  # "failed": both attempts used up by the dead worker
        leave_to_a_dead_worker(farm, shard.id, starts=farm.settings.max_attempts)
    return job_id, shard.id


@pytest.mark.parametrize(
    ("how", "outcome", "error"),
    [
        ("cancelled", "cancelled before it started", None),
        (
            "failed",
            "failed: attempts exhausted",
            "gave up after 2 attempts; the last one did not finish (the worker died or was killed)",
        ),
    ],
)
def test_claim_ends_a_shard_and_its_job_without_rendering(
    farm, faces, runtime, how, outcome, error
):
    job_id, shard_id = close_at_claim(farm, faces, how)

    assert run_shard(runtime, shard_id).result() == outcome

    job, (shard,), renders = job_rows(farm, job_id)
    assert shard.status == how and shard.finished is not None and shard.error == error
    assert shard.attempts == (1 if how == "cancelled" else 2)  # the claim used no attempt
    assert [(r.status, r.error) for r in renders] == [(how, error)] * 2
    assert list(farm.storage.list("jobs/")) == []
    # It was the job's last open shard: the job ends with it.
    assert job.status == how and job.finished is not None


class CancelAfterFirstBatch:
    """The pipeline, with `farm cancel` typed while its first batch renders."""

    def __init__(self, loaded: LoadedPreset, farm: Farm) -> None:
        self.pipeline, self.farm = loaded.pipeline, farm
        self.job_id: str | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result = self.pipeline(*args, **kwargs)
        if self.job_id is not None:
            assert cancel_job(self.farm, self.job_id).status is JobStatus.RUNNING
            self.job_id = None
        return result


def cancel_during_first_batch(farm: Farm, faces: Any, tiny: LoadedPreset) -> tuple[str, str]:
    """Run a two-render shard, one render per batch, cancelling its job during the first."""
    cancelling = CancelAfterFirstBatch(tiny, farm)
    runtime = runtime_with(farm, with_batch_size(tiny, 1, pipeline=cancelling))
    job_id = submit(farm, faces, make_story(2)).job_id
    _, (shard,), _ = job_rows(farm, job_id)
    cancelling.job_id = job_id
    return job_id, run_shard(runtime, shard.id).result()


def test_a_cancel_stops_a_running_shard_at_its_next_batch(farm, faces, tiny):
    job_id, outcome = cancel_during_first_batch(farm, faces, tiny)

    assert outcome == "cancelled"
    job, (shard,), renders = job_rows(farm, job_id)
    assert [r.status for r in renders] == [RenderStatus.DONE, RenderStatus.CANCELLED]
    assert shard.status is ShardStatus.CANCELLED
    assert job.status is JobStatus.CANCELLED and job.finished is not None


def test_renders_before_a_cancel_count_for_the_worker(farm, faces, tiny):
    cancel_during_first_batch(farm, faces, tiny)
    assert worker_counts(farm) == (1, 0, None)


@pytest.mark.parametrize(
    "batch_size",
    [
        1,
        8,
    ],
)
def test_a_scene_that_can_never_render_fails_alone(farm, faces, tiny, batch_size):
    runtime = runtime_with(farm, with_batch_size(tiny, batch_size))
    story = make_story([{"prompt": "a man img"}, {"prompt": "a man img under an apple tree"}])
    job_id = submit(farm, faces, story).job_id
    _, (shard,), (bad, _) = job_rows(farm, job_id)
    # A story is refused with such a prompt when it is read; a row planned before that check
    # (or one the pipeline refuses for a reason no check foresaw) must still fail alone.
    with farm.sessions.begin() as session:
        session.get(Render, bad.id).prompt = TOO_LONG

    assert run_shard(runtime, shard.id).result() == "failed"

    job, (shard,), (bad, good) = job_rows(farm, job_id)
    assert bad.status is RenderStatus.FAILED and "is too long for its identity tokens" in bad.error
    assert good.status is RenderStatus.DONE and farm.storage.exists(good.storage_key)
    assert shard.error == "some scenes could not be rendered; see their errors"
    assert job.status is JobStatus.FAILED and job.finished is not None
    assert worker_counts(farm) == (1, 1, None)


class StorageWrapper:
    """The farm's storage, with `put` going through `before_put(key)` first."""

    def __init__(self, storage: Any, before_put: Any) -> None:
        self.storage, self.before_put = storage, before_put

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.before_put(key)
        self.storage.put(key, data, content_type)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.storage, name)


class CountCalls:
    """The pipeline, setting `second_batch` when its second batch starts rendering."""

    def __init__(self, loaded: LoadedPreset) -> None:
        self.pipeline, self.calls = loaded.pipeline, 0
        self.second_batch = threading.Event()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == 2:
            self.second_batch.set()
        return self.pipeline(*args, **kwargs)


def test_the_next_batch_renders_while_the_last_one_is_stored(farm, faces, tiny):
    counting = CountCalls(tiny)
    runtime = runtime_with(farm, with_batch_size(tiny, 1, pipeline=counting))
    overlapped = []

    def first_upload_waits_for_the_second_batch(key: str) -> None:
        if not overlapped:
            overlapped.append(counting.second_batch.wait(timeout=30))

    job_id = submit(farm, faces, make_story(2)).job_id
    _, (shard,), _ = job_rows(farm, job_id)
    farm.__dict__["storage"] = StorageWrapper(farm.storage, first_upload_waits_for_the_second_batch)

    assert run_shard(runtime, shard.id).result() == "succeeded"
    assert overlapped == [True]
    assert [r.status for r in job_rows(farm, job_id)[2]] == [RenderStatus.DONE] * 2


def test_a_batch_that_cannot_be_stored_sends_the_shard_again_without_it(farm, faces, tiny):
    runtime = runtime_with(farm, with_batch_size(tiny, 1))
    job_id = submit(farm, faces, make_story(2)).job_id
    _, (shard,), _ = job_rows(farm, job_id)
    second = render_key(job_id, 1, 0)

    def refuse_the_second_render(key: str) -> None:
        if key == second:
            raise OSError("S3 is down")

    farm.__dict__["storage"] = StorageWrapper(farm.storage, refuse_the_second_render)

    assert run_shard(runtime, shard.id).result() == "requeued after an error"

    _, (shard,), renders = job_rows(farm, job_id)
    assert shard.status is ShardStatus.QUEUED and "S3 is down" in shard.error
    assert renders[0].status is RenderStatus.DONE
    # Not recorded as done: the shard's next attempt renders and stores it again.
    assert renders[1].status is not RenderStatus.DONE and renders[1].storage_key is None
    assert not farm.storage.exists(second)
    assert worker_counts(farm)[0] == 1


def wait_until(condition: Any, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_the_next_shard_renders_while_the_last_batch_of_one_is_stored(farm, faces, runtime):
    """A shard's task returns once its renders are made; the finisher ends it after storing
    them, while the worker claims and renders the next shard."""
    job_id = submit(farm, faces, make_story(3)).job_id  # shards of scenes 0-1 and 2
    _, (first, second), _ = job_rows(farm, job_id)
    gates = {0: threading.Event(), 1: threading.Event()}
    keys_of_second = {render_key(job_id, 2, 0), thumb_key(job_id, 2, 0)}

    def wait_for_its_gate(key: str) -> None:
        assert gates[key in keys_of_second].wait(timeout=30)

    farm.__dict__["storage"] = StorageWrapper(farm.storage, wait_for_its_gate)
    with farm.sessions() as session:
        claimed_lease = session.get(Shard, first.id).lease_expires
    ended_first = run_shard(runtime, first.id)

    assert not ended_first.done()
    _, (first, _), _ = job_rows(farm, job_id)
    assert (first.status, first.worker_id) == (ShardStatus.RUNNING, NAME)
    time.sleep(0.01)
    runtime.beat()  # the heartbeat keeps the lease of a shard still being stored
    _, (first, _), _ = job_rows(farm, job_id)
    assert claimed_lease is None or first.lease_expires > claimed_lease

    results: list[Any] = []
    next_task = threading.Thread(target=lambda: results.append(run_shard(runtime, second.id)))
    next_task.start()
    wait_until(lambda: worker_counts(farm)[2] == second.id)  # claimed while the first stores
    gates[0].set()
    assert ended_first.result(timeout=30) == "succeeded"
    # The first shard's end left the worker on the second, which it is still storing.
    assert worker_counts(farm) == (2, 0, second.id)

    gates[1].set()
    next_task.join(timeout=30)
    assert results[0].result(timeout=30) == "succeeded"
    job, shards, renders = job_rows(farm, job_id)
    assert job.status is JobStatus.SUCCEEDED
    assert [s.status for s in shards] == [ShardStatus.SUCCEEDED] * 2
    assert {r.status for r in renders} == {RenderStatus.DONE}
    assert worker_counts(farm) == (3, 0, None)


def test_a_worker_that_stops_ends_the_shards_it_is_still_storing(farm, faces, runtime):
    job_id = submit(farm, faces, make_story(2)).job_id
    _, (shard,), _ = job_rows(farm, job_id)
    gate = threading.Event()
    farm.__dict__["storage"] = StorageWrapper(farm.storage, lambda key: gate.wait(timeout=30))
    ended = run_shard(runtime, shard.id)
    assert not ended.done()

    threading.Timer(0.2, gate.set).start()
    runtime.stop()

    assert ended.done() and ended.result() == "succeeded"
    job, (shard,), renders = job_rows(farm, job_id)
    assert shard.status is ShardStatus.SUCCEEDED and job.status is JobStatus.SUCCEEDED
    assert all(farm.storage.exists(r.storage_key) for r in renders)


class AlwaysRaises:
    """The pipeline of a scene that breaks it every time, as a trigger word in a negative
    prompt once did (issue 20): every attempt raises."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise IndexError("index 77 is out of bounds for dimension 1 with size 77")


def test_a_job_whose_renders_always_raise_fails_at_its_last_attempt_with_the_error(
    farm, faces, tiny
):
    runtime = runtime_with(farm, replace(tiny, pipeline=AlwaysRaises()))
    job_id = submit(farm, faces, make_story(2)).job_id
    _, (shard,), _ = job_rows(farm, job_id)
    error = "IndexError: index 77 is out of bounds for dimension 1 with size 77"

    # Each attempt is delivered as a worker would get it: the task the last one sent.
    outcomes = []
    while sent := [t for t in farm.celery.sent if t.name == RENDER_SHARD]:
        farm.celery.sent.clear()
        (task,) = sent
        outcomes.append(run_shard(runtime, task.args[0]).result(timeout=30))

    assert outcomes == ["requeued after an error", "failed"]  # max_attempts is 2
    job, (shard,), renders = job_rows(farm, job_id)
    assert (shard.status, shard.attempts, shard.lease_expires) == (ShardStatus.FAILED, 2, None)
    assert shard.error == f"{error} (attempt 2 of 2)"
    assert [(r.status, r.error) for r in renders] == [(RenderStatus.FAILED, shard.error)] * 2
    assert job.status is JobStatus.FAILED and job.finished is not None
    assert job.error == f"shard 0 failed: {shard.error}; `farm retry` sends what failed again"
    assert [t.name for t in farm.celery.sent] == [FINALIZE_JOB]
    assert worker_counts(farm) == (0, 0, None)
