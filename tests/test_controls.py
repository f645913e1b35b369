"""Control images at the edge: read with the story, judged like photos, named by content."""

from __future__ import annotations

import base64
import copy
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from farm.controls import (
    attach,
    control_images,
    control_key,
    files_beside,
    store_controls,
    with_stored_refs,
)
from farm.errors import InputError
from farm.storage.local import LocalStorage
from farm.story import load_story, parse_story

PRESETS = {"tiny"}

STORY = {
    "character": {"name": "Newton", "class_word": "man", "photos": ["newton.jpg"]},
    "preset": "tiny",
    "width": 64,
    "height": 64,
    "scenes": [
        {"prompt": "a man img waving", "control": {"image": "poses/wave.png", "type": "openpose"}},
        {
            "prompt": "a man img waving again",
            "control": {"image": "poses/wave.png", "type": "depth"},
        },
        {"prompt": "a man img sitting"},
    ],
}


def png(size: tuple[int, int] = (64, 64), colour: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def story(**scene0):
    data = copy.deepcopy(STORY)
    data["scenes"][0]["control"].update(scene0)
    return parse_story(data, presets=PRESETS)


def test_one_image_used_by_two_scenes_is_read_and_stored_once(tmp_path: Path) -> None:
    s = story()
    images = control_images(s, {"poses/wave.png": png()})
    assert list(images) == ["poses/wave.png"]
    storage = LocalStorage(tmp_path)
    store_controls(storage, images)
    sha = images["poses/wave.png"].sha256
    assert list(storage.list("controls/")) == [control_key(sha)] == [f"controls/{sha[:2]}/{sha}"]
    assert storage.get(control_key(sha)) == png()
    stored = with_stored_refs(s, images)
    assert [sc.control.image if sc.control else None for sc in stored.scenes] == [
        f"sha256:{sha}",
        f"sha256:{sha}",
        None,
    ]
    # The content hash's view: the image by its content, whatever it was called.
    assert stored.plan()[0].control.recipe() == {"image": sha, "type": "openpose", "scale": 1.0}
    # A story copied from a job names the stored image, which is read back and judged again.
    assert control_images(stored, {}, storage)[f"sha256:{sha}"].data == png()


def test_a_data_url_is_an_image_sent_inside_the_body() -> None:
    url = "data:image/png;base64," + base64.b64encode(png()).decode()
    s = story(image=url)
    images = control_images(s, {"poses/wave.png": png((64, 64), "blue")})
    assert images[url].data == png()


@pytest.mark.parametrize(
    ("files", "image", "expected"),
    [
        ({}, None, "no image 'poses/wave.png' came with the story"),
        ({"poses/wave.png": b"GIF89a not an image"}, None, "not a readable JPEG, PNG or WebP"),
        (
            {"poses/wave.png": png((96, 64))},
            None,
            "96x64, but the story renders 64x64; a control map must have the render's size",
        ),
        ({}, "data:image/png;base64,%%%", "the data URL is not valid base64"),
        ({}, "sha256:" + "a" * 64, "names no control or reference image stored here"),
    ],
)
def test_bad_control_images_are_refused_naming_the_scene(files, image, expected) -> None:
    s = story() if image is None else story(image=image)
    with pytest.raises(InputError) as caught:
        control_images(s, files)
    assert str(caught.value).startswith("scenes[0].control.image")
    assert expected in str(caught.value)


def test_a_story_file_reads_its_control_images_from_beside_it(tmp_path: Path) -> None:
    (tmp_path / "poses").mkdir()
    (tmp_path / "poses" / "wave.png").write_bytes(png())
    (tmp_path / "newton.jpg").write_bytes(b"only existence is checked")
    (tmp_path / "story.json").write_text(json.dumps(STORY))
    s = load_story(tmp_path / "story.json", presets=PRESETS)
    files = files_beside(s)
    assert files == {"poses/wave.png": png()}
    attached = attach(s.plan(), s, {k: Image.open(io.BytesIO(v)) for k, v in files.items()})
    assert attached[0].control_image.size == (64, 64)
    assert attached[1].control.type == "depth" and attached[2].control_image is None
