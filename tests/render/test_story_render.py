"""Rendering a story in-process: determinism, and nothing written when a scene cannot render."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from farm.errors import InputError
from farm.recipe import render_filename
from farm.render.presets import PRESETS
from farm.render.story_render import render_story
from farm.story import load_story
from tests.fixtures.tiny import EXAMPLES


@pytest.fixture
def story():
    story = load_story(EXAMPLES / "story.yaml", presets=PRESETS)
    return story.model_copy(update={"scenes": story.scenes[:2], "steps": 2})


def test_same_story_same_seed_same_bytes(tiny, story, tmp_path):
    render_story(story, tmp_path / "a", tiny)
    render_story(story, tmp_path / "b", tiny)
    render_story(story, tmp_path / "c", tiny, batch_size=1)
    names = [render_filename(0, 0), render_filename(1, 0), render_filename(1, 1)]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        # Another batch size may round differently in the last bit, never more than that.
        batched, single = (np.asarray(Image.open(tmp_path / d / name), np.int16) for d in "ac")
        assert np.abs(batched - single).max() <= 1


def test_a_scene_that_cannot_render_fails_before_any_file_is_written(tiny, story, tmp_path):
    long_prompt = " ".join(["the"] * 70) + " man img"
    scenes = [*story.scenes, story.scenes[0].model_copy(update={"prompt": long_prompt})]
    bad = story.model_copy(update={"scenes": scenes})
    with pytest.raises(InputError, match="too long"):
        render_story(bad, tmp_path / "out", tiny)
    assert not (tmp_path / "out").exists()
