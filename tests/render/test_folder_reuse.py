"""`farm render --out DIR` into a folder it rendered before: only changed scenes render, kept
files stay byte for byte, moved scenes keep their pixels, gone scenes' files are removed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from farm.recipe import RECIPE_CHUNK, render_filename
from farm.render.folder_reuse import FolderReuse, story_hasher
from farm.render.loading import LoadedPreset
from farm.render.presets import PRESETS
from farm.render.story_render import render_story
from farm.settings import Settings
from farm.story import Story, load_story
from tests.fixtures.tiny import EXAMPLES


@pytest.fixture
def base() -> Story:
    story = load_story(EXAMPLES / "story.yaml", presets=PRESETS)
    one_photo = story.character.model_copy(update={"photos": story.character.photos[:1]})
    return story.model_copy(update={"steps": 2, "variants": 1, "character": one_photo})


def with_scenes(story: Story, prompts: list[str], **scene: Any) -> Story:
    scenes = [
        story.scenes[0].model_copy(update={"prompt": p, "variants": None, **scene}) for p in prompts
    ]
    return story.model_copy(update={"scenes": scenes})


def render(story: Story, out: Path, loaded: LoadedPreset, made: list[int]) -> dict[str, Any]:
    reuse = FolderReuse(
        out, story_hasher(story, Settings.from_env({"FARM_DATA_DIR": str(out.parent / "data")}))
    )
    manifest = render_story(
        story, out, loaded, reuse=reuse, on_render=lambda p, _: made.append(p.scene_index)
    )
    return json.loads(manifest.read_text())


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def test_only_changed_scenes_render_and_the_rest_stay_byte_for_byte(tiny, base, tmp_path):
    out, made = tmp_path / "out", []
    prompts = [f"a man img in scene {n}" for n in range(6)]
    first = render(with_scenes(base, prompts), out, tiny, made)
    assert made == [0, 1, 2, 3, 4, 5] and not any(e["reused"] for e in first["renders"])
    before = {p.name: p.read_bytes() for p in out.glob("*.png")}

    prompts[1], prompts[4] = "a man img on a horse", "a man img in the rain"
    second = render(with_scenes(base, prompts), out, tiny, made)

    assert made[6:] == [1, 4]
    assert [e["reused"] for e in second["renders"]] == [True, False, True, True, False, True]
    after = {p.name: p.read_bytes() for p in out.glob("*.png")}
    assert after.keys() == before.keys()
    for scene in (0, 2, 3, 5):
        name = render_filename(scene, 0)
        assert after[name] == before[name]
    assert after[render_filename(1, 0)] != before[render_filename(1, 0)]


def test_scenes_that_move_keep_their_pixels_and_gone_ones_are_removed(tiny, base, tmp_path):
    out, made = tmp_path / "out", []
    prompts = [f"a man img in scene {n}" for n in range(4)]
    (out).mkdir()
    (out / "notes.txt").write_text("mine")  # not the farm's: never touched
    render(with_scenes(base, prompts, seed=7), out, tiny, made)
    before = {n: pixels(out / render_filename(n, 0)) for n in range(4)}

    manifest = render(with_scenes(base, prompts[:1] + prompts[2:], seed=7), out, tiny, made)

    assert made == [0, 1, 2, 3]  # nothing rendered the second time
    assert manifest["removed"] == [render_filename(3, 0)]
    assert sorted(p.name for p in out.iterdir()) == [
        *(render_filename(n, 0) for n in range(3)),
        "manifest.json",
        "notes.txt",
    ]
    for now, then in ((0, 0), (1, 2), (2, 3)):  # scene 2 went; 3 and 4 moved up, same pixels
        assert np.array_equal(pixels(out / render_filename(now, 0)), before[then])
        with Image.open(out / render_filename(now, 0)) as image:
            assert json.loads(image.text[RECIPE_CHUNK])["scene"] == now


def test_a_file_changed_by_hand_is_rendered_again(tiny, base, tmp_path):
    out, made = tmp_path / "out", []
    story = with_scenes(base, ["a man img reading"])
    render(story, out, tiny, made)
    (out / render_filename(0, 0)).write_bytes(b"edited")
    render(story, out, tiny, made)
    assert made == [0, 0]
    assert pixels(out / render_filename(0, 0)).shape == (64, 64, 3)
