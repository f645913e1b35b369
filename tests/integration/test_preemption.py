"""A `farm worker` told to stop (SIGTERM, as a spot node's reclaim or a scale-down sends it)
in the middle of denoising: its batch is checkpointed to S3, its shard goes back to the queue
as interrupted (no attempt spent), and a worker started afterwards resumes the batch at that
step and makes the same PNG bytes as a run that was never stopped.
"""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from farm.auth import ensure_project
from farm.db.states import JobStatus, RenderStatus, ShardStatus
from farm.jobs import submit_with_photos
from farm.storage import Storage
from tests.fixtures.farm_cluster import (
    FarmCluster,
    describe_job,
    job_rows,
    make_story,
    wait_for_job,
    wait_for_running_render,
)
from workers.shard import checkpoint_key

pytestmark = pytest.mark.slow

# Enough steps that the SIGTERM lands mid-denoising: a tiny step is some 50 ms on one thread.
STEPS = 80


def test_sigterm_mid_render_checkpoints_and_another_worker_resumes_it_byte_for_byte(
    farm_cluster: FarmCluster,
) -> None:
    farm = farm_cluster.farm()
    bucket: Storage = farm_cluster.bucket()
    story, photos = make_story("newton_man", 2, steps=STEPS)  # one shard, one batch

    spot = farm_cluster.start_workers(1)
    job_id = farm_cluster.submit(farm, story, photos).job_id
    shard = wait_for_running_render(farm, job_id, spot.names()[0])
    time.sleep(1.0)  # some steps in
    assert spot.process is not None
    spot.process.send_signal(signal.SIGTERM)
    try:
        spot.process.wait(timeout=60)  # a warm shutdown: no shard to finish, only to hand on
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker did not stop\n{spot.report()}")

    job, (stopped,), renders = job_rows(farm, job_id)
    assert job.status is JobStatus.RUNNING, describe_job(farm, job_id)
    assert stopped.status is ShardStatus.QUEUED, describe_job(farm, job_id)
    assert (stopped.attempts, stopped.interruptions) == (0, 1)
    assert 0 < stopped.checkpoint_step < STEPS, spot.report()
    assert stopped.checkpoint_key == checkpoint_key(job_id, shard.id)
    assert bucket.exists(stopped.checkpoint_key)
    assert [r.status for r in renders] == [RenderStatus.QUEUED] * 2
    assert f"shard {shard.id} stopped at step {stopped.checkpoint_step} of {STEPS}" in spot.log()

    other = farm_cluster.start_workers(1)
    assert wait_for_job(farm, job_id, [other]).status is JobStatus.SUCCEEDED
    assert f"shard {shard.id} resumes its batch at step {stopped.checkpoint_step}" in other.log()
    _, (resumed,), renders = job_rows(farm, job_id)
    assert (resumed.attempts, resumed.interruptions, resumed.checkpoint_key) == (1, 1, None)
    assert not bucket.exists(checkpoint_key(job_id, shard.id))

    # The same story rendered without a stop, in another project: a project's second job of
    # the same content would reuse the first one's renders instead of rendering them.
    with farm.sessions.begin() as session:
        reference = ensure_project(session, "reference").id
    unbroken_id = submit_with_photos(
        farm, story, photos, farm_cluster.faces, project_id=reference
    ).job_id
    wait_for_job(farm, unbroken_id, [other])
    _, _, unbroken = job_rows(farm, unbroken_id)
    for render, again in zip(renders, unbroken, strict=True):
        assert again.reused_from_job is None and again.storage_key != render.storage_key
        assert bucket.get(render.storage_key) == bucket.get(again.storage_key)
        assert bucket.get(render.thumb_key) == bucket.get(again.thumb_key)
    other.stop()
