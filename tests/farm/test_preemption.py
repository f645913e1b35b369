"""A worker told to stop hands its shard on: the batch it was denoising is checkpointed, the
run is counted as an interruption and not an attempt, and another worker resumes the batch
at that step with the very pixels of a run that was never stopped. And a worker that failed
two of a job's shards is kept off that job.

In this process with the tiny preset; the same with real worker processes and SIGTERM is in
tests/integration/test_preemption.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import update

from farm.auth import ensure_project
from farm.blocklist import blocked_workers
from farm.context import Farm
from farm.db.models import Worker, WorkerFailures
from farm.db.states import JobStatus, RenderStatus, ShardStatus, WorkerStatus
from farm.lifecycle import retry_job
from farm.queue.app import RENDER_SHARD
from farm.recipe import RenderSettings
from farm.render.checkpoint import Checkpoint, RenderInterrupted
from farm.render.loading import LoadedPreset
from tests.farm.conftest import job_rows, make_story, submit
from tests.fixtures.tiny import photos_of
from workers import shard as shard_module
from workers.runtime import WorkerRuntime
from workers.shard import checkpoint_key, run_shard

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 6


class StopAfter:
    """A worker's stop flag that turns on after it was asked `calls` times (once before each
    batch, then before each denoising step after the first)."""

    def __init__(self, calls: int) -> None:
        self.calls = calls

    def is_set(self) -> bool:
        self.calls -= 1
        return self.calls < 0


def other_project(farm: Farm) -> int:
    with farm.sessions.begin() as session:
        return ensure_project(session, "reference").id


def a_runtime(farm: Farm, name: str, presets: dict[str, LoadedPreset]) -> WorkerRuntime:
    runtime = WorkerRuntime(farm, name, "cpu", ["tiny"], presets)
    runtime.register()
    runtime.beat()  # ready: a live worker, as the blocklist counts them
    return runtime


def test_a_batch_stopped_midway_resumes_to_the_same_pixels(tiny):
    identity = tiny.identity.tokens_for(photos_of("newton_man", 2), crop=False)
    settings = RenderSettings("tiny", 64, 64, STEPS, 5.0, "", 20.0)
    scenes = make_story(2).plan()
    unbroken = tiny.render(scenes, settings, {"img": identity})

    stop = StopAfter(3)
    with pytest.raises(RenderInterrupted) as stopped:
        tiny.render(scenes, settings, {"img": identity}, interrupted=stop.is_set)
    saved = stopped.value.checkpoint.to_bytes()
    checkpoint = Checkpoint.from_bytes(saved)
    assert 0 < checkpoint.step < STEPS

    resumed = tiny.render(scenes, settings, {"img": identity}, resume=checkpoint)
    for one, other in zip(unbroken.images, resumed.images, strict=True):
        assert np.array_equal(np.asarray(one), np.asarray(other))


def test_an_interrupted_shard_costs_no_attempt_and_resumes_elsewhere_byte_for_byte(
    farm, faces, tiny
):
    story = make_story(2, steps=STEPS)
    job_id = submit(farm, faces, story).job_id
    (shard,) = job_rows(farm, job_id)[1]
    stopping = a_runtime(farm, "spot:cpu0", {"tiny": tiny})
    stopping.stopping = StopAfter(3)
    counted = {"preset": "tiny"}
    before = REGISTRY.get_sample_value("farm_shard_interruptions_total", counted) or 0

    assert run_shard(stopping, shard.id, "task-1").result() == "interrupted"
    assert REGISTRY.get_sample_value("farm_shard_interruptions_total", counted) == before + 1

    job, (shard,), renders = job_rows(farm, job_id)
    assert job.status is JobStatus.RUNNING
    assert shard.status is ShardStatus.QUEUED
    assert (shard.attempts, shard.interruptions) == (0, 1)
    assert shard.checkpoint_key == checkpoint_key(job_id, shard.id)
    assert 0 < shard.checkpoint_step < STEPS
    assert f"resumes at step {shard.checkpoint_step}" in shard.error
    assert [r.status for r in renders] == [RenderStatus.QUEUED] * 2
    assert farm.storage.exists(shard.checkpoint_key)
    assert farm.celery.sent[-1].name == RENDER_SHARD and farm.celery.sent[-1].args == [shard.id]
    with farm.sessions() as session:
        assert blocked_workers(session, job_id) == []  # an interruption is no failure

    other = a_runtime(farm, "other:cpu0", {"tiny": tiny})
    assert run_shard(other, shard.id, "task-2").result() == "succeeded"
    # The same story again, rendered without a stop, for comparison: in another project,
    # since a project's second job of the same content reuses its first one's renders.
    reference = submit(farm, faces, story, project_id=other_project(farm)).job_id
    (_, (first,), _) = job_rows(farm, reference)
    assert run_shard(other, first.id, "task-3").result() == "succeeded"

    job, (shard,), renders = job_rows(farm, job_id)
    assert job.status is JobStatus.SUCCEEDED
    assert (shard.attempts, shard.interruptions, shard.checkpoint_key) == (1, 1, None)
    assert not farm.storage.exists(checkpoint_key(job_id, shard.id))
    _, _, references = job_rows(farm, reference)
    for render, unbroken in zip(renders, references, strict=True):
        assert render.worker_id == unbroken.worker_id == "other:cpu0"
        assert unbroken.reused_from_job is None
        assert farm.storage.get(render.storage_key) == farm.storage.get(unbroken.storage_key)


def test_a_worker_that_failed_two_of_a_jobs_shards_is_kept_off_it(farm, faces, tiny, monkeypatch):
    monkeypatch.setattr(shard_module, "DECLINE_PAUSE_S", 0.0)
    job_id = submit(farm, faces, make_story(6)).job_id  # three shards of two
    hint = job_rows(farm, job_id)[1][2].id  # the task's shard; the claim takes whose turn it is
    broken = a_runtime(farm, "broken:cpu0", {})  # hosts no pipeline: every run of it fails
    sound = a_runtime(farm, "sound:cpu0", {"tiny": tiny})

    assert run_shard(broken, hint).result() == "requeued after an error"
    with farm.sessions() as session:
        assert blocked_workers(session, job_id) == []
    run_shard(broken, hint).result()  # the second failure: its last attempt (of 2 here)
    with farm.sessions() as session:
        (blocked,) = blocked_workers(session, job_id)
    assert (blocked.worker_id, blocked.failures) == ("broken:cpu0", WorkerFailures.BLOCKLIST_AFTER)
    assert "does not host preset 'tiny'" in blocked.last_error

    def queued() -> list[tuple[int, int]]:
        shards = job_rows(farm, job_id)[1]
        return [(s.id, s.attempts) for s in shards if s.status is ShardStatus.QUEUED]

    waiting, sent = queued(), len(farm.celery.sent)
    outcome = run_shard(broken, hint, "task-x").result()
    assert outcome == f"declined: broken:cpu0 is kept off job {job_id}; sent back"
    assert queued() == waiting  # no attempt spent, nothing claimed
    assert [t.args for t in farm.celery.sent[sent:]] == [[hint]]

    assert run_shard(sound, hint).result() == "succeeded"  # the other worker takes the job's

    # With the sound worker gone, the blocked one is all that is left: the shard fails, and
    # says why, instead of circling between the queue and a worker that declines it.
    with farm.sessions.begin() as session:
        session.execute(
            update(Worker).where(Worker.id == "sound:cpu0").values(status=WorkerStatus.STOPPED)
        )
    (left, _), *_ = queued()
    assert run_shard(broken, left).result() == "failed: every worker is kept off its job"
    failed = [s for s in job_rows(farm, job_id)[1] if s.id == left]
    assert "every live worker hosting tiny failed 2 of this job's shards" in failed[0].error

    with farm.sessions.begin() as session:
        session.execute(
            update(Worker).where(Worker.id == "sound:cpu0").values(status=WorkerStatus.IDLE)
        )
    while queued():
        assert run_shard(sound, queued()[0][0]).result() == "succeeded"
    assert job_rows(farm, job_id)[0].status is JobStatus.FAILED

    assert retry_job(farm, job_id) == 2  # a retry gives every worker a fresh chance
    with farm.sessions() as session:
        assert blocked_workers(session, job_id) == []


def test_farm_drain_asks_the_running_batch_to_stop_and_farm_resume_takes_it_back(farm):
    runtime = a_runtime(farm, "drained:cpu0", {})
    assert not runtime.stop_requested()
    with farm.sessions.begin() as session:
        session.get_one(Worker, "drained:cpu0").drain()
    runtime.beat()  # the heartbeat reads the row
    assert runtime.stop_requested()
    with farm.sessions.begin() as session:
        session.get_one(Worker, "drained:cpu0").resume()
    runtime.beat()
    assert not runtime.stop_requested()
