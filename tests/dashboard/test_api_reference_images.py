"""An outfit's reference image through the API: sent as a data: URL inside the body, stored by
content before the job is written, named `sha256:<hex>` in the job's story and kept from
`farm gc` with it; a bad one is a 400 that writes nothing."""

from __future__ import annotations

import base64
import io

import yaml
from sqlalchemy import select

from farm.controls import control_key
from farm.db.models import JobControlImage
from farm.identity.photos import content_hash
from tests.fixtures.dashboard import Studio, make_character, story_body
from tests.fixtures.tiny import REFS

COAT = (REFS / "scarletthead_woman" / "scarlett_0.jpg").read_bytes()


def body_with_coat(character_id: int, image: str) -> dict:
    body = story_body(
        character_id, outfits={"coat": {"prompt": "wearing a red coat", "images": [image]}}
    )
    body["scenes"][0]["outfit"] = "coat"
    return body


def test_the_api_takes_an_outfit_with_a_reference_image(studio: Studio) -> None:
    url = "data:image/jpeg;base64," + base64.b64encode(COAT).decode()
    created = studio.call("POST", "/api/v1/jobs", json=body_with_coat(make_character(studio), url))
    assert created.status_code == 201, created.json
    job = studio.call("GET", f"/api/v1/jobs/{created.json['id']}").json
    sha = content_hash(COAT)
    assert job["story"]["character"]["outfits"]["coat"]["images"] == [f"sha256:{sha}"]
    assert studio.farm.storage.get(control_key(sha)) == COAT
    with studio.farm.sessions() as session:
        kept = session.scalars(select(JobControlImage.sha256)).all()
    assert sha in kept


def test_a_reference_image_that_is_no_image_is_a_400(studio: Studio) -> None:
    character_id = make_character(studio)
    rows, stored = studio.rows(), studio.stored()
    url = "data:image/png;base64," + base64.b64encode(b"not an image").decode()
    response = studio.call("POST", "/api/v1/jobs", json=body_with_coat(character_id, url))
    assert response.status_code == 400
    assert "character.outfits.coat.images[0]: reference image 'data URL'" in response.json["error"]
    assert studio.rows() == rows and studio.stored() == stored and not studio.tasks.sent


def test_the_story_form_takes_an_outfit_image_chosen_beside_the_story_file(studio: Studio):
    client = studio.client()
    csrf = studio.log_in(client, "a-artist")
    character_id = make_character(studio)
    story = {
        "character": {
            "name": "Someone",
            "class_word": "man",
            "photos": ["elsewhere.jpg"],
            "outfits": {"coat": {"prompt": "wearing a red coat", "images": ["outfits/coat.jpg"]}},
        },
        "preset": "tiny",
        "width": 64,
        "height": 64,
        "scenes": [{"prompt": "a man img at sea", "outfit": "coat"}],
    }
    response = client.post(
        "/stories/new",
        data={
            "csrf_token": csrf,
            "source": "file",
            "character_id": str(character_id),
            "story_file": (io.BytesIO(yaml.safe_dump(story).encode()), "story.yaml"),
            "control_images": [(io.BytesIO(COAT), "coat.jpg")],  # matched by file name
        },
    )
    assert response.status_code == 302, response.text
    job = studio.call("GET", f"/api/v1/jobs/{response.location.rsplit('/', 1)[-1]}").json
    images = job["story"]["character"]["outfits"]["coat"]["images"]
    assert images == [f"sha256:{content_hash(COAT)}"]
