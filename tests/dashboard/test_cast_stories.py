"""Stories with several characters through the API and the new-story form: each other trigger
word names one of the project's characters, validated as a story file's cast is."""

from __future__ import annotations

import io

import pytest
import yaml
from sqlalchemy import select

from farm.db.models import CastMember, Character
from tests.fixtures.dashboard import Studio, make_character, story_body

SCENES = [
    {"prompt": "a man img and a man img2 at a table", "caption": "Both"},
    {"prompt": "a man img2 in the garden"},
]


def cast_of_job(studio: Studio, job_id: str) -> list[tuple[str, str]]:
    """The job's cast as (trigger, character name)."""
    with studio.farm.sessions() as session:
        rows = session.execute(
            select(CastMember.trigger, Character.name)
            .join(Character, Character.id == CastMember.character_id)
            .where(CastMember.job_id == job_id)
            .order_by(CastMember.position)
        )
        return [tuple(row) for row in rows]


def test_a_cast_story_is_submitted_through_the_api(studio: Studio):
    newton, ada = make_character(studio), make_character(studio, name="Ada")
    cast = [{"character_id": ada, "trigger": "img2"}]
    body = story_body(newton, scenes=SCENES, cast=cast)

    plan = studio.call("POST", "/api/v1/jobs/plan", json=body)
    assert plan.status_code == 200 and plan.json["renders"] == 2
    created = studio.call("POST", "/api/v1/jobs", json=body)
    assert created.status_code == 201, created.json
    job_id = created.json["id"]
    assert cast_of_job(studio, job_id) == [("img2", "Ada")]
    story = studio.call("GET", f"/api/v1/jobs/{job_id}").json["story"]
    assert [(p["name"], p["trigger"]) for p in story["cast"]] == [("Ada", "img2")]


@pytest.mark.parametrize(
    ("cast", "scenes", "status", "message"),
    [
        ([{"character_id": "ada"}], SCENES, 400, "cast[0].character_id: the id of one of your"),
        ([{"character_id": 1, "photos": []}], SCENES, 400, "cast[0]: name one of your characters"),
        ({"img2": 1}, SCENES, 400, "cast: a list of at most 3 entries"),
        ([{"trigger": "img2"}] * 4, SCENES, 400, "cast: a list of at most 3 entries"),
        ([{"character_id": "ADA", "trigger": "img"}], SCENES, 400, "already taken"),
        ([{"character_id": "ADA", "trigger": "img2"}], [{"prompt": "a man img3"}], 400, "img3"),
        ([{"character_id": 999_999, "trigger": "img2"}], SCENES, 404, "no character 999999"),
    ],
)
def test_a_bad_cast_is_refused_and_writes_nothing(studio: Studio, cast, scenes, status, message):
    newton, ada = make_character(studio), make_character(studio, name="Ada")
    if isinstance(cast, list):
        cast = [{k: (ada if v == "ADA" else v) for k, v in entry.items()} for entry in cast]
    before = studio.rows()
    response = studio.call(
        "POST", "/api/v1/jobs", json=story_body(newton, scenes=scenes, cast=cast)
    )
    assert response.status_code == status and message in response.json["error"], response.json
    assert studio.rows() == before


def test_another_teams_character_is_not_a_cast_member(studio: Studio):
    newton, theirs = make_character(studio), make_character(studio, who="b-artist", name="B")
    body = story_body(newton, scenes=SCENES, cast=[{"character_id": theirs, "trigger": "img2"}])
    before = studio.rows()
    response = studio.call("POST", "/api/v1/jobs", json=body)
    assert response.status_code == 404 and studio.rows() == before


def test_the_story_forms_choose_a_character_for_each_other_trigger(studio: Studio):
    client = studio.client()
    csrf = studio.log_in(client)
    newton, ada = make_character(studio), make_character(studio, name="Ada")
    form = {
        "csrf_token": csrf,
        "source": "form",
        "character_id": str(newton),
        "preset": "tiny",
        "aspect": "custom",
        "width": "64",
        "height": "64",
        "steps": "2",
        "scenes": "a man img and a man img2 at a table\na man img2 alone",
        "cast_character_1": str(ada),
        "cast_trigger_1": "img2",
        "title": "Two of them",
    }
    page = client.get("/stories/new").text
    assert 'name="cast_character_1"' in page and 'name="approval"' in page
    response = client.post("/stories/new", data=form)
    assert response.status_code == 302, response.text
    job_id = response.location.rsplit("/", 1)[-1]
    assert cast_of_job(studio, job_id) == [("img2", "Ada")]
    assert studio.call("GET", f"/api/v1/jobs/{job_id}").json["name"] == "Two of them"

    # Without a character for img2 the form says what is missing and writes nothing.
    before = studio.rows()
    refused = client.post("/stories/new", data={**form, "cast_character_1": ""})
    assert refused.status_code == 400 and "img2" in refused.text
    assert studio.rows() == before

    # A story file's cast is matched the same way: its people are chosen on the page.
    story = {
        "cast": [{"name": "Ada", "class_word": "man", "trigger": "img2", "photos": ["a.jpg"]}],
        "preset": "tiny",
        "width": 64,
        "height": 64,
        "steps": 2,
        "scenes": SCENES,
    }
    upload = {
        "csrf_token": csrf,
        "source": "file",
        "character_id": str(newton),
        "story_file": (io.BytesIO(yaml.safe_dump(story).encode()), "story.yaml"),
    }
    refused = client.post("/stories/new", data=upload)
    assert refused.status_code == 400
    assert "choose one of your characters for each other trigger word (img2)" in refused.text
    upload["story_file"] = (io.BytesIO(yaml.safe_dump(story).encode()), "story.yaml")
    chosen = client.post(
        "/stories/new", data={**upload, "cast_character_1": str(ada), "cast_trigger_1": "img2"}
    )
    assert chosen.status_code == 302, chosen.text
    assert cast_of_job(studio, chosen.location.rsplit("/", 1)[-1]) == [("img2", "Ada")]
