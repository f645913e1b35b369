"""Several characters in one scene: each class word fused with its own character's ID tokens."""

from __future__ import annotations

import shutil

import pytest
import torch

from farm.errors import InputError
from farm.render.presets import PRESETS
from farm.render.story_render import render_story
from farm.story import parse_story
from tests.fixtures.tiny import REFS, photos_of


@pytest.fixture(scope="module")
def newton(tiny):
    return tiny.identity.tokens_for(photos_of("newton_man", 1))


@pytest.fixture(scope="module")
def scarlett(tiny):
    return tiny.identity.tokens_for(photos_of("scarletthead_woman", 2))


def test_each_class_word_is_fused_with_its_own_characters_tokens(tiny, newton, scarlett):
    pipeline = tiny.pipeline
    prompt = "a man img1 and a woman img2 at a table"
    embeds, _ = pipeline.encode_identity_prompt(prompt, {"img1": newton, "img2": scarlett})
    # bos a | man x 2 (1 photo x 2 tokens) | and a | woman x 4 (2 photos x 2 tokens) | at a table
    plain, _ = pipeline._encode_text("a man man and a woman woman woman woman at a table")
    man, woman = [2, 3], [6, 7, 8, 9]
    fuse = pipeline.id_encoder.fuse
    torch.testing.assert_close(embeds[man], fuse(plain[man], newton.flat()))
    torch.testing.assert_close(embeds[woman], fuse(plain[woman], scarlett.flat()))


def test_a_scene_with_one_of_the_cast_uses_only_that_identity(tiny, newton, scarlett):
    pipeline = tiny.pipeline
    both = {"img1": newton, "img2": scarlett}
    embeds, _ = pipeline.encode_identity_prompt("a woman img2 reading", both)
    alone, _ = pipeline.encode_identity_prompt("a woman img2 reading", {"img2": scarlett})
    torch.testing.assert_close(embeds, alone)


def test_a_story_with_a_cast_renders_every_scene(tiny, tmp_path):
    for person in ("newton_man", "scarletthead_woman"):
        shutil.copytree(REFS / person, tmp_path / person)
    story = parse_story(
        {
            "character": {
                "name": "Newton",
                "class_word": "man",
                "trigger": "img1",
                "photos": ["newton_man/newton_1.jpg"],
            },
            "cast": [
                {
                    "name": "Scarlett",
                    "class_word": "woman",
                    "trigger": "img2",
                    "photos": ["scarletthead_woman/scarlett_1.jpg"],
                }
            ],
            "preset": "tiny",
            "width": 64,
            "height": 64,
            "steps": 2,
            "scenes": [
                {"prompt": "a man img1 and a woman img2 at a table"},
                {"prompt": "a woman img2 in the garden"},
                {"prompt": "a man img1 reading"},
            ],
        },
        presets=PRESETS,
        source_dir=tmp_path,
    )
    manifest = render_story(story, tmp_path / "out", tiny)
    assert len(list((tmp_path / "out").glob("*.png"))) == 3
    assert '"Scarlett"' in manifest.read_text()


def test_a_prompt_naming_nobody_of_the_cast_is_refused(tiny, newton, scarlett):
    with pytest.raises(InputError, match="no trigger word"):
        tiny.pipeline.encode_identity_prompt("a cat on a mat", {"img1": newton, "img2": scarlett})
