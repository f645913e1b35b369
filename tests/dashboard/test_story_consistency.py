"""Consistency across scenes through the API and the story form: kept with the job's story,
or refused with a 400 that says why, with nothing written."""

from __future__ import annotations

import pytest

from tests.fixtures.dashboard import Studio, make_character, story_body

STORY_MODE = {"mode": "story", "strength": 1.5, "reference_scenes": [2]}


@pytest.fixture
def character_id(studio: Studio) -> int:
    return make_character(studio)


def test_the_api_keeps_a_storys_consistency(studio: Studio, character_id):
    created = studio.call(
        "POST", "/api/v1/jobs", json=story_body(character_id, consistency=STORY_MODE)
    )
    assert created.status_code == 201, created.json
    story = studio.call("GET", f"/api/v1/jobs/{created.json['id']}").json["story"]
    assert story["consistency"] | STORY_MODE == story["consistency"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"preset": "tiny-fast", "consistency": {"mode": "batch"}},
            "preset 'tiny-fast' does not support consistency",
        ),
        (
            {"consistency": {"mode": "story", "reference_scenes": [3]}},
            "reference scene 3 does not exist: this story has 2 scenes",
        ),
        ({"consistency": {"mode": "story", "sample_rate": 0}}, "consistency.sample_rate"),
    ],
)
def test_the_api_refuses_consistency_that_cannot_render(
    studio: Studio, character_id, overrides, message
):
    before = studio.rows()
    refused = studio.call("POST", "/api/v1/jobs", json=story_body(character_id, **overrides))
    assert refused.status_code == 400 and message in refused.json["error"], refused.json
    assert studio.rows() == before


def test_the_story_form_sets_consistency(studio: Studio, character_id):
    client = studio.client()
    csrf = studio.log_in(client)
    form = {
        "csrf_token": csrf,
        "source": "form",
        "character_id": str(character_id),
        "preset": "tiny",
        "aspect": "custom",
        "width": "64",
        "height": "64",
        "steps": "2",
        "scenes": "\n".join(
            f"a man img {place}" for place in ("in a library", "at a desk", "in a garden")
        ),
        "consistency_mode": "story",
        "consistency_strength": "2",
        "reference_scenes": "1, 3",
    }
    assert 'name="consistency_mode"' in client.get("/stories/new").text
    response = client.post("/stories/new", data=form)
    assert response.status_code == 302, response.text
    job_id = response.location.rsplit("/", 1)[-1]
    consistency = studio.call("GET", f"/api/v1/jobs/{job_id}").json["story"]["consistency"]
    assert (consistency["mode"], consistency["strength"]) == ("story", 2.0)
    assert consistency["reference_scenes"] == [1, 3]

    before = studio.rows()
    for references, said in (("two", "neither a count"), ("4", None), ("1, 5", "scene 5")):
        refused = client.post("/stories/new", data={**form, "reference_scenes": references})
        if said is None:  # a count beyond the scenes: the first three, all there are
            assert refused.status_code == 302, refused.text
            before = studio.rows()
            continue
        assert refused.status_code == 400 and said in refused.text, refused.text
        assert studio.rows() == before
