"""Reference images of outfits and locations in a story: read beside the story file and judged
like photos, stored and named by content as control images are, carried by the renders that
use them, part of their content hash, and refused clearly before anything renders."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from farm.controls import (
    attach,
    control_key,
    files_beside,
    stored_maps,
    stored_shas,
    submitted_story,
)
from farm.errors import InputError
from farm.identity.photos import content_hash
from farm.render.folder_reuse import story_hasher
from farm.render.presets import PRESETS
from farm.settings import Settings
from farm.storage.local import LocalStorage
from farm.story import PlannedRender, load_story
from tests.fixtures.tiny import REFS

COAT = REFS / "scarletthead_woman" / "scarlett_0.jpg"  # any real picture works
HALL = REFS / "lenna_woman" / "lenna.jpg"


def story_file(folder: Path, coat_images=("coat.jpg",), preset: str = "tiny") -> Path:
    shutil.copy(REFS / "newton_man" / "newton_0.jpg", folder / "newton.jpg")
    shutil.copy(COAT, folder / "coat.jpg")
    shutil.copy(HALL, folder / "hall.jpg")
    story = {
        "character": {
            "name": "Newton",
            "class_word": "man",
            "photos": ["newton.jpg"],
            "outfits": {
                "coat": {"prompt": "wearing a long red coat", "images": list(coat_images)},
                "robe": {"prompt": "wearing a blue robe"},
            },
        },
        "locations": {"hall": {"prompt": "in a great hall", "images": ["hall.jpg"]}},
        "preset": preset,
        "width": 64,
        "height": 64,
        "steps": 2,
        "scenes": [
            {"prompt": "a man img reading", "outfit": "coat", "location": "hall"},
            {"prompt": "a man img asleep", "outfit": "robe"},
        ],
    }
    path = folder / "story.yaml"
    path.write_text(yaml.safe_dump(story))
    return path


def test_images_are_stored_by_content_and_carried_by_the_renders_that_use_them(tmp_path):
    story = load_story(story_file(tmp_path), presets=PRESETS)
    storage = LocalStorage(tmp_path / "store")
    kept = submitted_story(storage, story, files_beside(story))
    coat, hall = content_hash(COAT.read_bytes()), content_hash(HALL.read_bytes())
    assert kept.character.outfits["coat"].images == [f"sha256:{coat}"]
    assert kept.locations["hall"].images == [f"sha256:{hall}"]
    assert storage.get(control_key(coat)) == COAT.read_bytes()
    assert stored_shas(kept) == sorted([coat, hall])  # kept from `farm gc` with the job
    first, second = kept.plan()
    assert [d.prompt for d in first.dressing] == ["wearing a long red coat", "in a great hall"]
    assert first.dressing[0].recipe()["images"] == [coat]
    assert second.dressing == ()  # the robe has no images, nor a location
    # A story without images keeps its stored form: no `images` key appears.
    assert "images" not in kept.model_dump(mode="json")["character"]["outfits"]["robe"]


def test_the_content_hash_changes_with_the_images_and_only_where_they_are_used(tmp_path):
    settings = Settings.from_env({"FARM_DATA_DIR": str(tmp_path / "data")})
    one = load_story(story_file(tmp_path), presets=PRESETS)
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    two = load_story(story_file(other_dir, ("hall.jpg",)), presets=PRESETS)
    storage = LocalStorage(tmp_path / "store")
    one = submitted_story(storage, one, files_beside(one))
    two = submitted_story(storage, two, files_beside(two))
    hashes_one = [story_hasher(one, settings).content(p) for p in one.plan()]
    hashes_two = [story_hasher(two, settings).content(p) for p in two.plan()]
    assert hashes_one[0] != hashes_two[0]  # another image for the coat
    assert hashes_one[1] == hashes_two[1]  # the robe's scene does not wear it


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: (d / "coat.jpg").write_text("not an image"),
            "character.outfits.coat.images[0]: reference image 'coat.jpg'",
        ),
        (lambda d: (d / "coat.jpg").unlink(), "reference image"),
    ],
)
def test_a_bad_image_is_refused_before_anything_is_stored(tmp_path, change, message):
    path = story_file(tmp_path)
    change(tmp_path)
    storage = LocalStorage(tmp_path / "store")
    with pytest.raises(InputError) as caught:
        story = load_story(path, presets=PRESETS)
        submitted_story(storage, story, files_beside(story))
    assert message in str(caught.value)
    assert not list(storage.list(""))


def test_a_missing_file_and_too_many_images_are_named_when_the_story_is_read(tmp_path):
    path = story_file(tmp_path, ("coat.jpg", "gone.jpg"))
    with pytest.raises(InputError, match=r"reference image .*gone.jpg is not a file"):
        load_story(path, presets=PRESETS)
    path = story_file(tmp_path, ("coat.jpg",) * 5)
    with pytest.raises(InputError, match=r"character.outfits.coat.images: list should have at"):
        load_story(path, presets=PRESETS)


def test_a_preset_that_refuses_consistency_refuses_reference_images(tmp_path):
    path = story_file(tmp_path, preset="tiny-fast")
    with pytest.raises(InputError) as caught:
        load_story(path, presets=PRESETS)
    assert "preset 'tiny-fast' does not support reference images" in str(caught.value)
    assert "outfit 'coat' of Newton" in str(caught.value)


def test_a_worker_fetches_the_images_its_renders_use_from_storage(tmp_path):
    story = load_story(story_file(tmp_path), presets=PRESETS)
    storage = LocalStorage(tmp_path / "store")
    kept = submitted_story(storage, story, files_beside(story))
    plan = kept.plan()
    # A claim's renders are made from their rows: the dressing comes from the job's story.
    bare = [
        PlannedRender(p.scene_index, p.variant, p.prompt, p.negative, p.seed, None) for p in plan
    ]
    first, second = attach(bare, kept, stored_maps(storage, kept, bare))
    assert [part.pixels[0].size for part in first.dressing] == [(1024, 1024), (512, 512)]
    assert first == plan[0] and second.dressing == ()  # pixels are not part of what it is
