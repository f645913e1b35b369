"""The farm as a cluster: stories through Redis to two `farm worker` processes, on PostgreSQL and
an S3 endpoint, with workers killed, shards that kill their worker, and S3 failing meanwhile.

One pair of workers serves the whole module (starting one costs tens of seconds of imports and
model loading on a CPU); each test submits jobs of its own and checks them by their ids, and the
test that kills a whole worker runs last. A pool child killed by a test comes back by itself:
Celery forks a new one, which loads the preset again.
"""

from __future__ import annotations

import io
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sqlalchemy import func, select

from farm.context import Farm
from farm.db.models import JobConsistencyTokens, Render, Shard, StoredIdentityTokens, Worker
from farm.db.states import JobStatus, RenderStatus, ShardStatus, WorkerStatus
from farm.jobs import render_key
from farm.queue.app import render_queue
from farm.recipe import render_filename
from farm.render.loading import LoadedPreset
from farm.render.story_render import render_story
from farm.storage import Storage
from farm.story import Story
from tests.fixtures.farm_cluster import (
    REPO,
    FarmCluster,
    WorkerGroup,
    assert_every_render_done_once,
    describe_job,
    job_rows,
    make_story,
    wait_for_job,
    wait_for_running_render,
    wait_idle,
)
from tests.fixtures.tiny import REFS
from workers.supervisor import cpu_shares

pytestmark = pytest.mark.slow

POISON = "hemlock"  # a prompt with this word kills its worker (see poison/sitecustomize.py)
POISON_PATH = Path(__file__).parent / "poison"


@pytest.fixture(scope="module")
def workers(farm_cluster: FarmCluster) -> Iterator[WorkerGroup]:
    group = farm_cluster.start_workers(
        2, PYTHONPATH=f"{POISON_PATH}{os.pathsep}{REPO}", FARM_TEST_POISON=POISON
    )
    yield group
    group.stop()


@pytest.fixture(scope="module")
def farm(farm_cluster: FarmCluster) -> Farm:
    return farm_cluster.farm()


@pytest.fixture(scope="module")
def bucket(farm_cluster: FarmCluster) -> Storage:
    """The bucket as moto holds it, read without the proxy."""
    return farm_cluster.bucket()


@pytest.fixture(autouse=True)
def no_troubles(workers: WorkerGroup) -> Iterator[None]:
    since = len(workers.log())
    yield
    assert workers.troubles(since) == [], workers.report()


def kill_mid_shard(
    farm: Farm, job_id: str, worker: str, processes: Callable[[], list[int]]
) -> tuple[Shard, list[int]]:
    """SIGKILL `processes()` while `worker` is in the middle of a shard of `job_id`; the shard
    and the processes killed.

    The processes are stopped first and the shard looked at again: if it ended meanwhile,
    they go on and the next shard is waited for, so the kill always lands mid-shard.
    """
    while True:
        shard = wait_for_running_render(farm, job_id, worker)
        pids = processes()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(0.3)  # a commit already on its way lands; none can follow
        with farm.sessions() as session:
            now = session.get(Shard, shard.id)
            undone = session.scalar(
                select(func.count())
                .select_from(Render)
                .where(Render.shard_id == shard.id, Render.status != RenderStatus.DONE)
            )
        if now.status is ShardStatus.RUNNING and now.worker_id == worker and undone:
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            return now, pids
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def queued_tasks(farm: Farm, preset: str) -> int:
    """Messages waiting in the broker's queue of `preset`."""
    with farm.celery.connection_for_write() as connection:
        try:
            return connection.default_channel.queue_declare(
                queue=render_queue(preset), passive=True
            ).message_count
        except connection.channel_errors:  # Redis drops the lists of an empty queue
            return 0


def worker_status(farm: Farm, name: str) -> WorkerStatus:
    with farm.sessions() as session:
        return session.get(Worker, name).status


def test_a_story_renders_on_two_workers_and_a_second_job_reuses_its_identity(
    farm_cluster: FarmCluster, workers: WorkerGroup, farm: Farm, bucket: Storage
) -> None:
    story, photos = make_story("scarletthead_woman", 6, variants=2)
    first = farm_cluster.submit(farm, story, photos)
    assert (first.renders, first.shards) == (12, 6)
    wait_for_job(farm, first.job_id, [workers])
    assert_every_render_done_once(farm, bucket, first.job_id, 12)
    _, shards, renders = job_rows(farm, first.job_id)
    assert {r.worker_id for r in renders} == set(workers.names()), "both workers took part"
    assert {s.worker_id for s in shards} == set(workers.names())

    second_story, _ = make_story("scarletthead_woman", ["a woman img at the seaside"] * 4)
    second = farm_cluster.submit(farm, second_story, photos)
    wait_for_job(farm, second.job_id, [workers])
    assert_every_render_done_once(farm, bucket, second.job_id, 4)

    # Computed once in the first job, by one of the two workers that needed them at once,
    # and never in the second: SQL records each computation, the workers log each shard's.
    first_job, _, _ = job_rows(farm, first.job_id)
    second_job, _, _ = job_rows(farm, second.job_id)
    with farm.sessions() as session:
        created = list(session.scalars(select(StoredIdentityTokens.created)))
    assert sum(first_job.created <= c <= first_job.finished for c in created) == 1
    assert not any(c >= second_job.created for c in created)
    log = workers.log()
    for job, computed in ((first_job, 1), (second_job, 0)):
        lines = [line for line in log.splitlines() if f"job {job.id} shard" in line]
        assert len(lines) == len(job_rows(farm, job.id)[1]), "one identity line per shard"
        assert sum(" computed in " in line for line in lines) == computed, "\n".join(lines)


def test_story_consistency_split_over_two_workers_equals_one_process(
    farm_cluster: FarmCluster,
    workers: WorkerGroup,
    farm: Farm,
    bucket: Storage,
    tiny: LoadedPreset,
    tmp_path: Path,
) -> None:
    """Every render attends to the same two reference scenes, rendered once by one worker and
    read from the bucket by the other: the pictures are those of one process, to the byte."""
    story, photos = make_story("newton_man", 5)
    consistency = {"mode": "story", "reference_scenes": 2, "window": [0, 1], "strength": 2}
    spec = story.model_dump(mode="json") | {"consistency": consistency}
    submitted = farm_cluster.submit(farm, Story.model_validate(spec), photos)
    assert submitted.shards == 3
    wait_for_job(farm, submitted.job_id, [workers])
    assert_every_render_done_once(farm, bucket, submitted.job_id, 5)
    _, _, renders = job_rows(farm, submitted.job_id)
    assert {r.worker_id for r in renders} == set(workers.names()), "both workers took part"

    local = Story.model_validate(spec, context={"source_dir": REFS / "newton_man"})
    # A CPU's convolutions round by the number of threads they are split over: the one process
    # renders on as many as each worker does (its share of the cores: workers.supervisor).
    shares = cpu_shares(workers.count, None, sorted(os.sched_getaffinity(0)))
    (threads,) = {len(cores) for cores in shares}
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        render_story(local, tmp_path, tiny)
    finally:
        torch.set_num_threads(threads_before)
    for render in renders:
        with Image.open(io.BytesIO(bucket.get(render.storage_key))) as image:
            farmed = np.asarray(image)
        with Image.open(tmp_path / render_filename(render.scene_index, render.variant)) as image:
            alone = np.asarray(image)
        assert np.array_equal(farmed, alone), f"scene {render.scene_index + 1}"

    # Rendered once across the farm, stored one object per step with the manifest last.
    assert workers.log().count("rendered 2 reference scenes") == 1
    stored = [key for key in bucket.list("consistency/") if key.endswith("manifest.json")]
    assert len(stored) == 1
    prefix = stored[0].rsplit("/", 1)[0]
    assert len(list(bucket.list(prefix))) == 1 + 2  # 2 steps
    with farm.sessions() as session:  # what keeps them from `farm gc` while the job exists
        (row,) = session.scalars(
            select(JobConsistencyTokens).where(JobConsistencyTokens.job_id == submitted.job_id)
        )
    assert (row.storage_prefix, row.references) == (prefix, 2) and row.stored_bytes > 0


def test_the_workers_run_with_the_reliability_settings(workers: WorkerGroup, farm: Farm) -> None:
    """What the worker processes really run with, asked of them over the broker."""
    nodes = {f"cpu{slot}@{name.split(':')[0]}" for slot, name in enumerate(workers.names())}
    inspect = farm.celery.control.inspect(list(nodes), timeout=10, limit=len(nodes))
    confs = inspect.conf(with_defaults=False)
    assert set(confs or {}) == nodes, workers.report()
    with farm.sessions() as session:
        ended = session.scalars(select(Shard).where(Shard.finished.is_not(None)))
        longest = max(((s.finished - s.started).total_seconds() for s in ended), default=0.0)
    for conf in confs.values():
        assert conf["task_acks_late"] is True
        assert conf["task_reject_on_worker_lost"] is True
        assert conf["worker_prefetch_multiplier"] == 1
        assert conf["worker_concurrency"] == 1
        assert conf["worker_proc_alive_timeout"] >= 600  # a child may load its presets
        visibility = conf["broker_transport_options"]["visibility_timeout"]
        assert visibility == farm.settings.visibility_timeout_s > farm.settings.lease_s
        assert visibility > 100 * longest
    for stats in inspect.stats().values():
        assert stats["prefetch_count"] == 1
        assert stats["pool"]["max-concurrency"] == 1
    for tasks in inspect.registered("acks_late", "reject_on_worker_lost").values():
        assert "farm.render_shard [acks_late=True reject_on_worker_lost=True]" in tasks


def test_s3_failing_under_a_running_job_is_retried(
    farm_cluster: FarmCluster, workers: WorkerGroup, farm: Farm, bucket: Storage
) -> None:
    story, photos = make_story("newton_man", 8)
    job_id = farm_cluster.submit(farm, story, photos).job_id
    wait_for_running_render(farm, job_id, workers.names()[0])
    # Within what S3Storage's retries outlast (about 8 s of errors), and long enough that the
    # renders in the pipeline now finish and upload meanwhile.
    farm_cluster.proxy.arm("503", seconds=5)
    try:
        wait_for_job(farm, job_id, [workers])
        failed = dict(farm_cluster.proxy.failed_methods)
    finally:
        farm_cluster.proxy.arm("503")  # neither a count nor a time left: healthy again
    assert_every_render_done_once(farm, bucket, job_id, 8)
    assert failed.get("PUT", 0) > 0, failed
    assert "503 ServiceUnavailable" in workers.log()


def test_a_pool_child_killed_mid_shard_costs_an_attempt_not_a_render(
    farm_cluster: FarmCluster, workers: WorkerGroup, farm: Farm, bucket: Storage
) -> None:
    story, photos = make_story("newton_man", 8, steps=4)
    wait_idle(farm, [workers])
    job_id = farm_cluster.submit(farm, story, photos).job_id
    # cpu1 runs no beat, so its main process has one child: the one that renders.
    killed, (child,) = kill_mid_shard(
        farm, job_id, workers.names()[1], lambda: workers.child_pids("cpu1")
    )
    wait_for_job(farm, job_id, [workers])
    assert_every_render_done_once(farm, bucket, job_id, 8)
    _, shards, _ = job_rows(farm, job_id)
    assert [s.attempts for s in shards if s.id == killed.id] == [2]
    assert all(s.attempts == 1 for s in shards if s.id != killed.id)
    log = workers.log()
    assert f"pid:{child} exited with 'signal 9 (SIGKILL)'" in log
    # The child that replaced it ended the lease at once, instead of after a whole lease.
    assert f"shard {killed.id} was left running by a dead {workers.names()[1]}" in log


def test_a_shard_that_always_kills_its_worker_fails_after_the_cap(
    farm_cluster: FarmCluster, workers: WorkerGroup, farm: Farm, bucket: Storage
) -> None:
    scenes = [f"a man img drinking {POISON}", "a man img reading", "a man img writing"]
    story, photos = make_story("newton_man", scenes)
    job_id = farm_cluster.submit(farm, story, photos).job_id
    job = wait_for_job(farm, job_id, [workers], timeout_s=240)
    assert job.status is JobStatus.FAILED, describe_job(farm, job_id)
    _, (poisoned, healthy), renders = job_rows(farm, job_id)
    cap = farm.settings.max_attempts
    assert (poisoned.status, poisoned.attempts) == (ShardStatus.FAILED, cap)
    # Ended by the claim that found no attempt left, or by the reaper after the last one.
    assert re.search(rf"gave up after {cap} attempts|attempt {cap} of {cap}", poisoned.error)
    assert [r.status for r in renders] == [RenderStatus.FAILED] * 2 + [RenderStatus.DONE]
    assert healthy.status is ShardStatus.SUCCEEDED
    assert list(bucket.list(f"jobs/{job_id}/renders/")) == [render_key(job_id, 2, 0)]

    # Not in a loop: no attempt, no death and no task after the end.
    kills = f"poison: shard {poisoned.id} kills"
    assert workers.log().count(kills) == cap
    time.sleep(3 * farm.settings.reap_interval_s)
    _, (after, _), _ = job_rows(farm, job_id)
    assert (after.status, after.attempts, after.version) == (
        poisoned.status,
        poisoned.attempts,
        poisoned.version,
    )
    assert workers.log().count(kills) == cap
    assert queued_tasks(farm, "tiny") == 0


def test_a_worker_killed_mid_shard_is_reaped_and_its_shard_rendered_elsewhere(
    farm_cluster: FarmCluster, workers: WorkerGroup, farm: Farm, bucket: Storage
) -> None:
    """Runs last: the killed worker (main process and child) stays dead."""
    story, photos = make_story("newton_man", 8, steps=4)
    wait_idle(farm, [workers])
    job_id = farm_cluster.submit(farm, story, photos).job_id
    survivor, victim = workers.names()
    killed, _ = kill_mid_shard(
        farm,
        job_id,
        victim,
        lambda: [workers.main_pid("cpu1"), *workers.child_pids("cpu1")],
    )
    wait_for_job(farm, job_id, [workers])
    assert_every_render_done_once(farm, bucket, job_id, 8)
    _, shards, renders = job_rows(farm, job_id)
    (reaped,) = [s for s in shards if s.id == killed.id]
    assert (reaped.attempts, reaped.worker_id) == (2, survivor)
    assert {r.worker_id for r in renders if r.shard_id == reaped.id} == {survivor}
    assert reaped.id in workers.reaped("requeued")
    deadline = time.monotonic() + 3 * farm.settings.lease_s
    while worker_status(farm, victim) is not WorkerStatus.LOST:
        assert time.monotonic() < deadline, f"{victim} not marked lost\n{workers.report()}"
        time.sleep(0.5)
