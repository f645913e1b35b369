"""Identity QC in the worker: a score for every render, and renders under the job's bar made
again with new seeds, the best kept."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from farm.recipe import RECIPE_CHUNK
from farm.story import PlannedRender
from tests.farm.conftest import job_rows, make_story, submit
from tests.farm.test_run_shard import runtime_with
from workers.qc import Checked, IdentityCheck, qc_seed
from workers.shard import run_shard

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def brightness(self: IdentityCheck, image: Image.Image) -> float:
    """A stand-in score that is a pure function of the pixels: the tiny preset draws noise, in
    which no face model finds a face, and the loop's logic is what is under test here."""
    return float(np.asarray(image, np.float64).mean() / 255)


def run_job(farm, faces, runtime, **fields):
    job_id = submit(farm, faces, make_story(4, **fields)).job_id
    for shard in job_rows(farm, job_id)[1]:
        run_shard(runtime, shard.id).result()
    return job_rows(farm, job_id)[2]


def test_every_render_gets_a_score_and_none_is_retried_without_a_bar(farm, faces, tiny):
    renders = run_job(farm, faces, runtime_with(farm, tiny))
    # Noise has no face: "no face found" is recorded as no score, never as 0.
    assert [(r.face_similarity, r.qc_retries, r.qc_seed) for r in renders] == [(None, 0, None)] * 4


def test_exactly_the_renders_under_the_bar_are_made_again(farm, faces, tiny, monkeypatch):
    monkeypatch.setattr(IdentityCheck, "score", brightness)
    runtime = runtime_with(farm, tiny)
    first = run_job(farm, faces, runtime)
    scores = sorted(r.face_similarity for r in first)
    bar = (scores[1] + scores[2]) / 2  # two renders under it, two over

    again = run_job(farm, faces, runtime, min_face_similarity=bar, qc_retries=3)

    for before, after in zip(first, again, strict=True):
        assert after.seed == before.seed  # the same scene, variant and first seed
        if before.face_similarity >= bar:
            assert (after.qc_retries, after.qc_seed) == (0, None)
            assert after.face_similarity == pytest.approx(before.face_similarity)
        else:
            assert after.qc_retries >= 1
            assert after.face_similarity >= before.face_similarity  # the best is kept
            if after.qc_seed is not None:
                assert after.qc_seed in {
                    qc_seed(after.seed, k) for k in range(1, after.qc_retries + 1)
                }
                png = Image.open(io.BytesIO(farm.storage.get(after.storage_key)))
                assert json.loads(png.text[RECIPE_CHUNK])["seed"] == after.qc_seed


class Seeded:
    """render_again for the unit tests: an image that remembers its seed."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    def __call__(self, seed: int) -> Image.Image:
        self.asked.append(seed)
        image = Image.new("RGB", (8, 8))
        image.info["seed"] = seed
        return image


def check_with(scores: dict[int, float | None], minimum: float | None, retries: int):
    check = IdentityCheck.__new__(IdentityCheck)
    check.minimum, check.max_retries = minimum, retries
    check.score = lambda image: scores[image.info["seed"]]  # type: ignore[method-assign]
    again = Seeded()
    first = Image.new("RGB", (8, 8))
    first.info["seed"] = 7
    planned = PlannedRender(0, 0, "a man img", "", 7, None)
    return check.check(first, planned, again), again.asked


def test_a_passing_render_is_kept_as_it_is():
    checked, asked = check_with({7: 0.9}, minimum=0.5, retries=3)
    assert (checked.similarity, checked.retries, checked.seed, asked) == (0.9, 0, 7, [])


def test_retries_stop_at_the_first_that_passes_and_keep_it():
    seeds = [qc_seed(7, k) for k in (1, 2, 3)]
    checked, asked = check_with({7: 0.1, seeds[0]: 0.3, seeds[1]: 0.8, seeds[2]: 0.99}, 0.5, 3)
    assert asked == seeds[:2]
    assert (checked.similarity, checked.retries, checked.seed) == (0.8, 2, seeds[1])


def test_no_face_is_retried_and_the_best_of_all_tries_is_kept():
    seeds = [qc_seed(7, k) for k in (1, 2)]
    checked, asked = check_with({7: None, seeds[0]: 0.4, seeds[1]: None}, 0.5, 2)
    assert asked == seeds
    assert checked == Checked(checked.image, 0.4, 2, seeds[0])
