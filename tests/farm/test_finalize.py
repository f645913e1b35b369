"""When a job ends: its finalize task is queued, and builds the comic and exports in storage."""

from __future__ import annotations

import pytest

from farm.queue.app import CONTROL_QUEUE, FINALIZE_JOB
from tests.farm.conftest import job_rows, make_story, submit
from tests.farm.test_run_shard import runtime_with
from workers.finalize import finalize_job
from workers.shard import run_shard

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_last_shard_queues_finalize_which_builds_comic_and_exports(farm, faces, tiny):
    runtime = runtime_with(farm, tiny)
    job_id = submit(farm, faces, make_story(3)).job_id
    _, shards, _ = job_rows(farm, job_id)
    farm.celery.sent.clear()
    for shard in shards:
        run_shard(runtime, shard.id).result()
    assert [(t.name, t.args, t.queue) for t in farm.celery.sent] == [
        (FINALIZE_JOB, [job_id], CONTROL_QUEUE)
    ]

    keys = finalize_job(farm, job_id)

    assert {"pdf", "cbz", "renders", "page-001"} <= set(keys)
    for key in keys.values():
        assert farm.storage.exists(key)
    assert keys["pdf"] == f"jobs/{job_id}/comic/comic.pdf"
    assert farm.storage.get(keys["pdf"]).startswith(b"%PDF")


def test_a_job_without_renders_finalizes_without_outputs(farm, faces):
    job_id = submit(farm, faces, make_story(1)).job_id
    assert finalize_job(farm, job_id) == {}
