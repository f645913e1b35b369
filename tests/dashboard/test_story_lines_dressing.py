"""Outfits, locations, shots and control images through the story form's scene lines: a line's
`outfit: coat | location: library | shot: wide | control: pose.png openpose 0.8` reaches the
job's story, the image stored by its content; a bad one re-renders the form with the reason and
what was typed, with nothing written."""

from __future__ import annotations

import io
from typing import Any

import pytest
from flask.testing import FlaskClient

from dashboard.pages.stories import parse_scenes
from farm.controls import control_key
from farm.errors import InputError
from tests.dashboard.test_story_dressing import png
from tests.fixtures.dashboard import Studio, make_character

OUTFITS = "coat: wearing a long red wool coat\nrobe: wearing a blue silk robe"
LOCATIONS = "library: in a dim Victorian library"
SCENES = (
    "a man img reading | Chapter 1 | outfit: coat | location: library | shot: wide"
    " | control: pose.png openpose 0.8\n"
    "a man img asleep | | 2 | outfit: robe"
)


@pytest.fixture
def artist(studio: Studio) -> tuple[FlaskClient, str, int]:
    client = studio.client()
    csrf = studio.log_in(client)
    return client, csrf, make_character(studio)


def form_of(csrf: str, character_id: int, **change: Any) -> dict[str, Any]:
    return {
        "csrf_token": csrf,
        "source": "form",
        "character_id": str(character_id),
        "preset": "tiny",
        "aspect": "custom",
        "width": "64",
        "height": "64",
        "steps": "2",
        "scenes": SCENES,
        "outfits": OUTFITS,
        "locations": LOCATIONS,
        "control_images": [(io.BytesIO(png()), "pose.png")],
        **change,
    }


def test_scene_lines_dress_each_scene(studio: Studio, artist):
    client, csrf, character_id = artist
    response = client.post("/stories/new", data=form_of(csrf, character_id))
    assert response.status_code == 302, response.text

    job_id = response.location.rsplit("/", 1)[-1]
    story = studio.call("GET", f"/api/v1/jobs/{job_id}").json["story"]
    first, second = story["scenes"]
    assert (first["caption"], first["outfit"], first["location"], first["shot"]) == (
        "Chapter 1",
        "coat",
        "library",
        "wide",
    )
    assert (first["control"]["type"], first["control"]["scale"]) == ("openpose", 0.8)
    sha = first["control"]["image"].removeprefix("sha256:")
    assert studio.farm.storage.get(control_key(sha)) == png()
    assert (second["outfit"], second["variants"], second.get("control")) == ("robe", 2, None)
    assert story["character"]["outfits"]["robe"]["prompt"] == "wearing a blue silk robe"
    assert story["locations"]["library"]["prompt"] == "in a dim Victorian library"
    page = client.get(f"/jobs/{job_id}").text
    assert "outfit coat · location library · wide shot · openpose control × 0.8" in page


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"outfits": "cape: a cape"}, "scenes[0].outfit: the character Newton has no outfit"),
        ({"locations": ""}, "scenes[0].location: the story has no location &#39;library&#39;"),
        (
            {"control_images": [(io.BytesIO(png((64, 32))), "pose.png")]},
            "64x32, but the story renders 64x64",
        ),
        (
            {"control_images": [(io.BytesIO(b"notes"), "pose.png")]},
            "not a readable JPEG, PNG or WebP image",
        ),
        ({"control_images": []}, "no image &#39;pose.png&#39; came with the story"),
        ({"outfits": "a coat"}, "outfits, line 1: write &#39;name: text&#39;"),
        (
            {"scenes": "a man img | control: pose.png"},
            "scenes, line 1: write control: &lt;file&gt;",
        ),
        ({"scenes": "a man img | shot: wide | shot: medium"}, "shot is set twice"),
    ],
)
def test_a_bad_scene_line_shows_why_keeps_the_form_and_writes_nothing(
    studio: Studio, artist, change, message
):
    client, csrf, character_id = artist
    rows, stored = studio.rows(), studio.stored()
    form = form_of(csrf, character_id, **change)
    response = client.post("/stories/new", data=form)
    assert response.status_code == 400
    assert message in response.text
    assert form["scenes"].split("\n")[0].replace("'", "&#39;") in response.text
    assert (form["outfits"] or "") in response.text
    if form["control_images"]:  # the browser dropped the file: the page names it
        assert "choose again: pose.png" in response.text
    assert studio.rows() == rows and studio.stored() == stored and not studio.tasks.sent


def test_settings_and_positional_parts_mix_in_any_order():
    assert parse_scenes("a man img | shot: close-up | The end | | Outfit: coat") == [
        {"prompt": "a man img", "shot": "close-up", "caption": "The end", "outfit": "coat"}
    ]
    assert parse_scenes("a man img | control: my pose.png depth")[0]["control"] == {
        "image": "my pose.png",
        "type": "depth",
    }
    with pytest.raises(InputError, match=r"line 1: write prompt \| caption \| variants"):
        parse_scenes("a man img | one | two | three | location: library")
