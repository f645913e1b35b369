"""Outfits, locations and shots: how they compose a scene's prompt, and what is refused."""

import copy
from pathlib import Path

import pytest

from farm import styles
from farm.composition import SHOT_PROMPTS, Shot
from farm.errors import InputError
from farm.story import parse_story

PRESETS = {"tiny"}

DRESSED = {
    "character": {
        "name": "Newton",
        "class_word": "man",
        "photos": ["newton.jpg"],
        "outfits": {
            "coat": {"prompt": "wearing a long red wool coat"},
            "robe": {"prompt": "wearing a blue silk robe"},
        },
    },
    "locations": {"library": {"prompt": "in a dim Victorian library with oak shelves"}},
    "preset": "tiny",
    "style": "(No style)",
    "scenes": [
        {"prompt": "a man img reading", "outfit": "coat", "location": "library", "shot": "wide"},
        {"prompt": "a man img asleep", "outfit": "robe"},
        {"prompt": "a man img at the window"},
    ],
}


def dressed() -> dict:
    return copy.deepcopy(DRESSED)


def problems(data: dict) -> str:
    with pytest.raises(InputError) as caught:
        parse_story(data, presets=PRESETS, source="s.yaml")
    return str(caught.value)


def test_a_scene_prompt_is_its_words_then_outfit_location_and_shot() -> None:
    plan = parse_story(dressed(), presets=PRESETS).plan()
    assert plan[0].prompt == (
        "a man img reading, wearing a long red wool coat, "
        "in a dim Victorian library with oak shelves, wide shot, establishing shot"
    )
    assert plan[1].prompt == "a man img asleep, wearing a blue silk robe"


def test_a_scene_that_names_nothing_renders_as_before() -> None:
    bare = dressed()
    del bare["character"]["outfits"], bare["locations"]
    for scene in bare["scenes"]:
        for part in ("outfit", "location", "shot"):
            scene.pop(part, None)
    with_wardrobe = parse_story(dressed(), presets=PRESETS).plan()
    without = parse_story(bare, presets=PRESETS).plan()
    assert with_wardrobe[2] == without[2]
    assert with_wardrobe[2].prompt == "a man img at the window"
    # Dressing a scene changes its prompt only: its seed stays that of its place.
    assert [p.seed for p in with_wardrobe] == [p.seed for p in without]


def test_the_style_template_wraps_the_composed_prompt() -> None:
    data = dressed()
    data["style"] = "Comic book"
    planned = parse_story(data, presets=PRESETS).plan()[1]
    expected, _ = styles.apply_style("Comic book", "a man img asleep, wearing a blue silk robe", "")
    assert planned.prompt == expected


@pytest.mark.parametrize("shot", list(Shot))
def test_every_shot_adds_its_words(shot: Shot) -> None:
    data = dressed()
    data["scenes"] = [{"prompt": "a man img", "shot": shot.value}]
    assert parse_story(data, presets=PRESETS).plan()[0].prompt == f"a man img, {SHOT_PROMPTS[shot]}"


def test_each_cast_member_may_wear_an_outfit_in_cast_order() -> None:
    data = dressed()
    data["character"]["trigger"] = "img1"
    data["cast"] = [
        {
            "name": "Ada",
            "class_word": "woman",
            "trigger": "img2",
            "photos": ["ada.jpg"],
            "outfits": {"gown": {"prompt": "the woman in a green gown"}},
        }
    ]
    data["scenes"] = [
        {"prompt": "a man img1 and a woman img2 talk", "outfit": {"img2": "gown", "img1": "coat"}}
    ]
    assert parse_story(data, presets=PRESETS).plan()[0].prompt == (
        "a man img1 and a woman img2 talk, wearing a long red wool coat, the woman in a green gown"
    )


def test_an_outfit_or_location_that_does_not_exist_is_named_with_the_defined_ones() -> None:
    data = dressed()
    data["scenes"][0]["outfit"] = "cape"
    data["scenes"][1]["location"] = "garden"
    message = problems(data)
    assert (
        "s.yaml: scenes[0].outfit: the character Newton has no outfit 'cape' "
        "(defined: 'coat', 'robe')" in message
    )
    assert (
        "s.yaml: scenes[1].location: the story has no location 'garden' (defined: 'library')"
        in (message)
    )


def test_an_outfit_for_an_unknown_trigger_is_refused() -> None:
    data = dressed()
    data["scenes"][0]["outfit"] = {"img7": "coat"}
    assert "scenes[0].outfit: no character has the trigger 'img7'" in problems(data)


def test_an_unknown_shot_lists_the_shots() -> None:
    data = dressed()
    data["scenes"][0]["shot"] = "dutch-angle"
    message = problems(data)
    assert "scenes[0].shot:" in message and "close-up" in message and "birds-eye" in message


def test_outfit_text_counts_in_the_prompt_length_check() -> None:
    data = dressed()
    # 8 photos x 2 tokens put the identity near the end of the 77 tokens; the composition adds
    # its text after the trigger, so it never pushes the identity out and is not refused.
    data["character"]["photos"] = [f"p{i}.jpg" for i in range(8)]
    data["character"]["outfits"]["coat"]["prompt"] = "wearing " + "red " * 60
    plan = parse_story(data, presets=PRESETS).plan()
    assert plan[0].prompt.startswith("a man img reading, wearing red red")


def test_a_control_image_path_is_checked_beside_the_story_file(tmp_path: Path) -> None:
    (tmp_path / "newton.jpg").write_bytes(b"only existence is checked here")
    data = dressed()
    data["scenes"][0]["control"] = {"image": "poses/missing.png", "type": "openpose"}
    with pytest.raises(InputError) as caught:
        parse_story(data, presets=PRESETS, source="s.yaml", source_dir=tmp_path)
    assert f"scenes[0].control.image: control image {tmp_path}/poses/missing.png is not a file" in (
        str(caught.value)
    )


def test_a_control_needs_a_known_type_and_a_scale_within_range() -> None:
    data = dressed()
    data["scenes"][0]["control"] = {"image": "p.png", "type": "sketch", "scale": 3}
    message = problems(data)
    assert "scenes[0].control.type:" in message and "openpose" in message
    assert "scenes[0].control.scale: input should be less than or equal to 2" in message
