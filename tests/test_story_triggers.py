"""Trigger words when a story is read: identity tokens that cannot fit in 77 tokens, and trigger
words in negative prompts, are refused with the story's other problems instead of failing every
render of the job later."""

from __future__ import annotations

import pytest

from farm.errors import InputError
from farm.render.presets import PRESETS
from farm.story import parse_story

PHOTOS = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]


def story(prompt: str, *, preset: str = "tiny", style: str = "(No style)", **fields) -> dict:
    character = {"name": "Ada", "class_word": "woman", "photos": PHOTOS}
    character |= fields.pop("character", {})
    return {
        "character": character,
        "preset": preset,
        "style": style,
        "scenes": [{"prompt": prompt, **fields.pop("scene", {})}],
        **fields,
    }


def refusal(data: dict) -> str:
    with pytest.raises(InputError) as caught:
        parse_story(data, presets=PRESETS, source="s.yaml")
    return str(caught.value)


def filler(count: int) -> str:
    return " ".join(["the"] * count)


# BOS + filler + the class word repeated (4 photos: 4 tokens in V1, 8 in V2): the last identity
# token is at place filler + tokens, and place 76 is the last one a prompt has.
@pytest.mark.parametrize(("preset", "tokens"), [("tiny", 8), ("tiny-v1", 4)])
def test_identity_tokens_past_place_76_are_refused_when_read(preset, tokens):
    fits = story(f"{filler(76 - tokens)} woman img reading", preset=preset)
    assert parse_story(fits, presets=PRESETS).scenes
    message = refusal(story(f"{filler(77 - tokens)} woman img reading", preset=preset))
    assert "scenes[0].prompt: too long for its identity tokens" in message
    assert "end at token 78 or later" in message


def test_the_style_template_s_words_count():
    """The style "Fantasy art" puts five words before the prompt, and they count."""
    prompt = f"{filler(76 - 8 - 3)} woman img reading"
    assert parse_story(story(prompt), presets=PRESETS).scenes
    assert "too long for its identity tokens" in refusal(story(prompt, style="Fantasy art"))


def test_text_after_the_identity_may_run_past_77():
    """The reference cuts it; only identity tokens that would be cut are a problem."""
    assert parse_story(story(f"a woman img {filler(200)}"), presets=PRESETS).scenes


def test_the_read_time_count_agrees_with_the_encoder_on_one_token_words(tiny):
    """Where every word is one token, the fewest tokens are the tokens: both checks give the
    same verdict on each side of the limit."""
    for count in (76 - 8, 77 - 8):
        prompt = f"{filler(count)} woman img reading"
        try:
            parse_story(story(prompt), presets=PRESETS)
            read_ok = True
        except InputError:
            read_ok = False
        try:
            tiny.pipeline.check_prompt(prompt, {"img": 8})
            encode_ok = True
        except InputError:
            encode_ok = False
        assert read_ok == encode_ok == (count == 76 - 8)


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"scene": {"negative": "blurry IMG"}}, "scenes[0].negative: contains the trigger"),
        ({"negative_prompt": "img, lowres"}, "negative_prompt: contains the trigger word 'img'"),
    ],
)
def test_a_trigger_word_in_a_negative_prompt_is_refused(fields, where):
    assert where in refusal(story("a woman img reading", **fields))


def test_a_trigger_word_in_the_style_s_negative_is_refused():
    """'Digital Art' lists "photo" among its negatives: a character triggered by "photo" would
    make every render of the story fail."""
    data = story("a woman photo reading", style="Digital Art", character={"trigger": "photo"})
    message = refusal(data)
    assert "style: the negative prompt of style 'Digital Art'" in message
    assert "trigger word 'photo' of Ada; choose another trigger word or another style" in message
    data["style"] = "Neonpunk"
    assert parse_story(data, presets=PRESETS).scenes


def test_a_word_that_only_contains_the_trigger_is_no_trigger():
    assert parse_story(story("a woman img", negative_prompt="imgur, lowres"), presets=PRESETS)
