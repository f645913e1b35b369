"""Outfits, locations, shots and control images through the API and the story form: accepted
and shown per scene, or refused with a 400 that names the scene, with nothing written."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
import yaml
from PIL import Image
from sqlalchemy import select

from farm.controls import control_key
from farm.db.models import JobControlImage
from tests.fixtures.dashboard import Studio, finish_renders, make_character, story_body


def png(size: tuple[int, int] = (64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, "white").save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def dressed_body(character_id: int, **scene0: Any) -> dict[str, Any]:
    body = story_body(
        character_id,
        outfits={"coat": {"prompt": "wearing a long red wool coat"}},
        locations={"library": {"prompt": "in a dim Victorian library"}},
    )
    body["scenes"][0].update(
        {
            "outfit": "coat",
            "location": "library",
            "shot": "wide",
            "control": {"image": data_url(png()), "type": "openpose", "scale": 0.8},
            **scene0,
        }
    )
    return body


@pytest.fixture
def character_id(studio: Studio) -> int:
    return make_character(studio)


def test_the_api_takes_outfits_locations_and_a_control_image(studio: Studio, character_id):
    created = studio.call("POST", "/api/v1/jobs", json=dressed_body(character_id))
    assert created.status_code == 201, created.json
    job = studio.call("GET", f"/api/v1/jobs/{created.json['id']}").json
    scene = job["story"]["scenes"][0]
    sha = scene["control"]["image"].removeprefix("sha256:")
    assert studio.farm.storage.get(control_key(sha)) == png()
    assert job["story"]["character"]["outfits"]["coat"]["prompt"] == "wearing a long red wool coat"

    finish_renders(studio, created.json["id"])
    renders = studio.call("GET", f"/api/v1/jobs/{created.json['id']}/renders").json["items"]
    assert (  # inside the default style's template
        "a man img reading in a library, wearing a long red wool coat, "
        "in a dim Victorian library, wide shot, establishing shot" in renders[0]["prompt"]
    )
    client = studio.client()
    studio.log_in(client, "a-viewer")
    line = "outfit coat · location library · wide shot · openpose control × 0.8"
    assert line in client.get(f"/jobs/{created.json['id']}").text
    assert line in client.get(f"/renders/{renders[0]['id']}").text
    assert line in client.get(f"/jobs/{created.json['id']}/comic").text
    plain = studio.call("POST", "/api/v1/jobs", json=story_body(character_id)).json["id"]
    for page in (f"/jobs/{plain}", f"/jobs/{plain}/comic"):  # nothing to list: no table
        assert 'data-field="scene-dressing"' not in client.get(page).text


@pytest.mark.parametrize(
    ("scene0", "message"),
    [
        ({"outfit": "cape"}, "scenes[0].outfit: the character Newton has no outfit 'cape'"),
        ({"location": "moon"}, "scenes[0].location: the story has no location 'moon'"),
        (
            {"control": {"image": data_url(png((64, 32))), "type": "depth"}},
            "scenes[0].control.image: control image 'data URL': 64x32, but the story renders",
        ),
        (
            {"control": {"image": data_url(b"not an image"), "type": "canny"}},
            "not a readable JPEG, PNG or WebP image",
        ),
        (
            {"control": {"image": "pose.png", "type": "canny"}},
            "scenes[0].control.image: no image 'pose.png' came with the story",
        ),
    ],
)
def test_bad_dressing_is_a_400_and_writes_nothing(studio: Studio, character_id, scene0, message):
    rows, stored = studio.rows(), studio.stored()
    response = studio.call("POST", "/api/v1/jobs", json=dressed_body(character_id, **scene0))
    assert response.status_code == 400
    assert message in response.json["error"]
    assert studio.rows() == rows and studio.stored() == stored and not studio.tasks.sent


def test_the_story_form_takes_a_story_file_with_its_control_images(studio: Studio):
    client = studio.client()
    csrf = studio.log_in(client, "a-artist")
    character_id = make_character(studio)
    story = {
        "character": {
            "name": "Someone",
            "class_word": "man",
            "photos": ["elsewhere.jpg"],
            "outfits": {"robe": {"prompt": "wearing a blue silk robe"}},
        },
        "preset": "tiny",
        "width": 64,
        "height": 64,
        "scenes": [
            {
                "prompt": "a man img at sea",
                "outfit": "robe",
                "control": {"image": "poses/sea.png", "type": "depth"},
            }
        ],
    }
    response = client.post(
        "/stories/new",
        data={
            "csrf_token": csrf,
            "source": "file",
            "character_id": str(character_id),
            "story_file": (io.BytesIO(yaml.safe_dump(story).encode()), "story.yaml"),
            "control_images": [(io.BytesIO(png()), "sea.png")],
        },
    )
    assert response.status_code == 302, response.text
    job = studio.call("GET", f"/api/v1/jobs/{response.location.rsplit('/', 1)[-1]}").json
    assert job["story"]["scenes"][0]["control"]["image"].startswith("sha256:")
    assert job["story"]["character"]["outfits"] == {"robe": {"prompt": "wearing a blue silk robe"}}


def test_a_revision_through_the_api_stores_the_images_it_sends(studio: Studio, character_id):
    created = studio.call("POST", "/api/v1/jobs", json=story_body(character_id)).json["id"]
    finish_renders(studio, created)
    pose = png()
    control = {"image": data_url(pose), "type": "openpose"}
    changes = {"scenes": {"add": [{"prompt": "a man img dancing", "control": control}]}}

    response = studio.call("PATCH", f"/api/v1/jobs/{created}/story", json=changes)

    assert response.status_code == 200, response.json
    job = studio.call("GET", f"/api/v1/jobs/{created}").json
    ref = job["story"]["scenes"][-1]["control"]["image"]
    assert ref.startswith("sha256:")  # the job keeps a reference, not the image
    sha = ref.removeprefix("sha256:")
    assert studio.farm.storage.get(control_key(sha)) == pose
    with studio.farm.sessions() as session:  # kept from `farm gc` while the job may read it
        kept = session.scalars(
            select(JobControlImage.sha256).where(JobControlImage.job_id == created)
        )
        assert list(kept) == [sha]
    # A second revision naming it by its reference reads it from storage; no second row.
    finish_renders(studio, created)
    again = {"scenes": {"change": {"1": {"prompt": "a man img reading again"}}}}
    assert studio.call("PATCH", f"/api/v1/jobs/{created}/story", json=again).status_code == 200
    assert studio.rows()["job_control_images"] == 1


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ("sha256:" + "0" * 64, "names no control or reference image stored here"),
        ("poses/sea.png", "no image 'poses/sea.png' came with the story"),
        (data_url(png((32, 32))), "32x32, but the story renders"),
    ],
)
def test_a_revision_with_a_bad_image_is_a_400_and_changes_nothing(
    studio: Studio, character_id, image: str, message: str
):
    created = studio.call("POST", "/api/v1/jobs", json=story_body(character_id)).json["id"]
    finish_renders(studio, created)
    rows, stored, sent = studio.rows(), studio.stored(), len(studio.tasks.sent)
    control = {"image": image, "type": "depth"}
    changes = {"scenes": {"change": {"1": {"control": control}}}}

    response = studio.call("PATCH", f"/api/v1/jobs/{created}/story", json=changes)

    assert response.status_code == 400 and message in response.json["error"], response.json
    assert studio.rows() == rows and studio.stored() == stored
    assert len(studio.tasks.sent) == sent
