"""A job whose outfit has a reference image, rendered by workers: the image comes from the job's
story in storage, its tokens are made once and stored, and a second worker reads them."""

from __future__ import annotations

import io
import os
import time
from datetime import timedelta

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import delete, select

from farm.controls import submitted_story
from farm.db.models import Job, JobConsistencyTokens
from farm.gc import find_garbage
from farm.render.reference_images import ReferenceImageTokens
from tests.farm.conftest import job_rows, make_story, submit
from tests.fixtures.tiny import REFS
from workers.runtime import WorkerRuntime
from workers.shard import run_shard

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COAT = (REFS / "scarletthead_woman" / "scarlett_0.jpg").read_bytes()


def coat_story(images: bool, seed: int = 1687):
    outfit = {"prompt": "wearing a red coat", **({"images": ["coat.jpg"]} if images else {})}
    story = make_story([{"prompt": "a man img standing"}, {"prompt": "a man img sitting"}])
    data = story.model_dump(mode="json")
    data["character"]["outfits"] = {"coat": outfit}
    data["scenes"][0]["outfit"] = "coat"
    return type(story).model_validate({**data, "seed": seed})


def test_workers_render_an_outfit_image_from_tokens_made_once(farm, faces, tiny):
    runtime = WorkerRuntime(farm, "testhost:cpu0", "cpu", ["tiny"], {"tiny": tiny})
    runtime.register()
    own = tiny.pipeline.reference_images

    jobs = []

    def rendered(images: bool, seed: int = 1687) -> list[np.ndarray]:
        story = submitted_story(farm.storage, coat_story(images, seed), {"coat.jpg": COAT})
        job_id = submit(farm, faces, story).job_id
        jobs.append(job_id)
        for shard in job_rows(farm, job_id)[1]:
            assert run_shard(runtime, shard.id).result() == "succeeded"
        return [
            np.asarray(Image.open(io.BytesIO(farm.storage.get(r.storage_key)))).astype(int)
            for r in job_rows(farm, job_id)[2]
        ]

    try:
        first = tiny.pipeline.reference_images = ReferenceImageTokens("tiny", farm.storage)
        plain, dressed = rendered(False), rendered(True)
        assert np.abs(dressed[0] - plain[0]).max() > 0  # the scene wearing the coat
        assert np.array_equal(dressed[1], plain[1])  # the other, to the byte
        assert (first.computed, first.loaded) == (1, 0)
        assert list(farm.storage.list("reference-images/"))
        # Another worker's process, and a new seed (the same one would reuse the renders):
        # the tokens do not depend on the seed, so they are read, not made again.
        second = tiny.pipeline.reference_images = ReferenceImageTokens("tiny", farm.storage)
        rendered(True, seed=7)
        assert (second.computed, second.loaded) == (0, 1)
        # Each job that reads them has its row: `farm gc` keeps them while one of them lives.
        stored = list(farm.storage.list("reference-images/"))
        prefix = stored[0].rsplit("/", 1)[0]
        with farm.sessions() as session:
            rows = session.scalars(
                select(JobConsistencyTokens.job_id).where(
                    JobConsistencyTokens.storage_prefix == prefix
                )
            )
            assert sorted(rows) == sorted([jobs[1], jobs[2]])
        then = time.time() - 7200  # past gc's grace of an hour
        for key in stored:
            os.utime(farm.storage.root / key, (then, then))

        def garbage() -> set[str]:
            return {o.key for o in find_garbage(farm, grace=timedelta(hours=1))}

        with farm.sessions.begin() as session:
            session.execute(delete(Job).where(Job.id == jobs[1]))
        assert not garbage() & set(stored)
        with farm.sessions.begin() as session:
            session.execute(delete(Job).where(Job.id == jobs[2]))
        assert set(stored) <= garbage()
    finally:
        tiny.pipeline.reference_images = own
