"""A job whose scenes show several characters: each cast member is a character of its own,
recorded with the job, and the worker fuses each class word with its own character's tokens."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from farm.db.models import CastMember, Character
from farm.db.states import JobStatus, RenderStatus
from farm.errors import InputError
from farm.identity.engine import Photo
from farm.jobs import submit_with_photos
from tests.farm.conftest import PHOTO, job_rows, make_story
from tests.farm.test_run_shard import runtime_with
from tests.fixtures.tiny import REFS
from workers.shard import run_shard

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCARLETT = Photo("scarlett_1.jpg", (REFS / "scarletthead_woman" / "scarlett_1.jpg").read_bytes())
CAST = [{"name": "Scarlett", "class_word": "woman", "trigger": "img2", "photos": ["s.jpg"]}]
SCENES = [
    {"prompt": "a man img and a woman img2 at a table"},
    {"prompt": "a woman img2 in the garden"},
    {"prompt": "a man img reading"},
]


def test_a_story_with_a_cast_renders_on_a_worker(farm, faces, tiny):
    story = make_story(SCENES, cast=CAST)
    job_id = submit_with_photos(
        farm, story, [PHOTO], faces, cast_photos={"img2": [SCARLETT]}
    ).job_id
    with farm.sessions() as session:
        (member,) = session.scalars(select(CastMember).where(CastMember.job_id == job_id))
        assert member.trigger == "img2"
        assert session.get(Character, member.character_id).name == "Scarlett"

    runtime = runtime_with(farm, tiny)
    for shard in job_rows(farm, job_id)[1]:
        run_shard(runtime, shard.id).result()

    job, _, renders = job_rows(farm, job_id)
    assert job.status is JobStatus.SUCCEEDED
    assert [r.status for r in renders] == [RenderStatus.DONE] * 3


def test_every_cast_member_needs_photos(farm, faces):
    story = make_story(SCENES, cast=CAST)
    with pytest.raises(InputError, match="img2"):
        submit_with_photos(farm, story, [PHOTO], faces)
