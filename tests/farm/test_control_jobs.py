"""A job with control images: stored once by content before its rows, named by content in its
story, kept by `farm gc` while a job needs them, and read back by the worker that renders it."""

from __future__ import annotations

import io
import os
import time
from datetime import timedelta

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import delete, select

from farm.controls import control_key, submitted_story
from farm.db.models import Job, JobControlImage
from farm.errors import InputError
from farm.gc import find_garbage
from tests.farm.conftest import job_rows, make_story, submit
from workers.runtime import WorkerRuntime
from workers.shard import run_shard

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def pose_png(colour: str = "white") -> bytes:
    image = Image.new("RGB", (64, 64))
    image.paste(Image.new("RGB", (8, 40), colour), (28, 12))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def controlled_story(scale: float | None = 1.0):
    """Three scenes, the first two posed at `scale` (None: no control at all)."""
    control = {"image": "pose.png", "type": "openpose", "scale": scale}
    scenes = [{"prompt": f"a man img {verb}"} for verb in ("standing", "sitting", "walking")]
    if scale is not None:
        scenes[0]["control"] = scenes[1]["control"] = control
    return make_story(scenes)


def test_a_job_keeps_its_control_images_by_content(farm, faces):
    story = submitted_story(farm.storage, controlled_story(), {"pose.png": pose_png()})
    job_id = submit(farm, faces, story).job_id
    job, _, _ = job_rows(farm, job_id)
    sha = story.scenes[0].control.image.removeprefix("sha256:")
    assert [(s["control"] or {}).get("image") for s in job.spec["scenes"]] == [
        f"sha256:{sha}",
        f"sha256:{sha}",
        None,
    ]
    assert farm.storage.get(control_key(sha)) == pose_png()
    with farm.sessions() as session:
        rows = session.scalars(select(JobControlImage).where(JobControlImage.job_id == job_id))
        assert [(r.sha256, r.storage_key) for r in rows] == [(sha, control_key(sha))]

    # A second job with the same image shares the object; gc keeps it while either job lives.
    again = submitted_story(farm.storage, controlled_story(0.5), {"pose.png": pose_png()})
    other = submit(farm, faces, again).job_id
    then = time.time() - 7200  # past gc's grace of an hour
    os.utime(farm.storage.root / control_key(sha), (then, then))

    def garbage() -> list[str]:
        return [o.key for o in find_garbage(farm, grace=timedelta(hours=1))]

    with farm.sessions.begin() as session:
        session.execute(delete(Job).where(Job.id == job_id))
    assert control_key(sha) not in garbage()
    with farm.sessions.begin() as session:
        session.execute(delete(Job).where(Job.id == other))
    assert control_key(sha) in garbage()


def test_a_bad_control_image_is_refused_before_anything_is_written(farm, faces):
    with pytest.raises(InputError, match=r"scenes\[0\].control.image: .*not a readable JPEG"):
        submitted_story(farm.storage, controlled_story(), {"pose.png": b"not an image"})
    assert list(farm.storage.list("controls/")) == []


def test_the_worker_renders_each_scene_with_its_stored_map(farm, faces, tiny):
    runtime = WorkerRuntime(farm, "testhost:cpu0", "cpu", ["tiny"], {"tiny": tiny})
    runtime.register()

    def rendered(scale: float | None) -> list[np.ndarray]:
        story = submitted_story(farm.storage, controlled_story(scale), {"pose.png": pose_png()})
        job_id = submit(farm, faces, story).job_id
        for shard in job_rows(farm, job_id)[1]:
            assert run_shard(runtime, shard.id).result() == "succeeded"
        return [
            np.asarray(Image.open(io.BytesIO(farm.storage.get(r.storage_key)))).astype(int)
            for r in job_rows(farm, job_id)[2]
        ]

    plain, zero, posed = rendered(None), rendered(0.0), rendered(1.0)
    # Scale 0 is no control; a scene without control is untouched by its neighbours' maps.
    assert all(np.array_equal(a, b) for a, b in zip(zero, plain, strict=True))
    assert np.array_equal(posed[2], plain[2])
    assert np.abs(posed[0] - plain[0]).max() > 0 and np.abs(posed[1] - plain[1]).max() > 0
