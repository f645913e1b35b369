"""The story spec: what loads, what is refused and how it says so, and how it is planned."""

import copy
import hashlib
import json
import time
from pathlib import Path

import pytest
import yaml

from farm import styles
from farm.documents import DocumentLimits
from farm.errors import InputError
from farm.story import (
    MAX_PHOTOS,
    MAX_RENDERS,
    PlannedRender,
    Story,
    derive_seed,
    load_story,
    parse_story,
)

PRESETS = {"tiny", "sdxl-v2"}
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "story.yaml"

GOOD = {
    "character": {
        "name": "Newton",
        "class_word": "man",
        "photos": ["photos/newton_0.jpg", "photos/newton_1.jpg"],
    },
    "preset": "tiny",
    "scenes": [
        {"prompt": "a photo of a man img reading in a library", "caption": "Chapter 1"},
        {"prompt": "a man img, under an apple tree", "seed": 7, "variants": 3},
        {"prompt": "A MAN IMG looking at the stars", "negative": "daylight"},
    ],
}


def good() -> dict:
    return copy.deepcopy(GOOD)


@pytest.fixture
def story_dir(tmp_path: Path) -> Path:
    """A folder with the photos GOOD names, so that it loads as a file."""
    (tmp_path / "photos").mkdir()
    for name in ("newton_0.jpg", "newton_1.jpg"):
        (tmp_path / "photos" / name).write_bytes(b"not really a jpeg; only existence is checked")
    return tmp_path


def problems(data: dict, **kwargs) -> str:
    with pytest.raises(InputError) as caught:
        parse_story(data, presets=PRESETS, source="s.yaml", **kwargs)
    return str(caught.value)


# Loading ----------------------------------------------------------------------------------------


def test_a_good_story_loads_with_defaults(story_dir: Path):
    path = story_dir / "story.yaml"
    path.write_text(yaml.safe_dump(good()))
    story = load_story(path, presets=PRESETS)
    assert story.character.trigger == "img"
    assert story.character.face_crop is False
    assert story.style == styles.DEFAULT_STYLE
    assert story.negative_prompt == styles.DEFAULT_NEGATIVE_PROMPT
    assert (story.steps, story.guidance, story.style_strength) == (50, 5.0, 20)
    assert (story.seed, story.variants) == (0, 1)
    assert story.render_size() == (1024, 1024)
    assert story.source_dir == story_dir
    assert story.photo_paths() == [
        story_dir / "photos/newton_0.jpg",
        story_dir / "photos/newton_1.jpg",
    ]


@pytest.mark.parametrize("dump", [json.dumps, yaml.safe_dump], ids=["json", "yaml"])
@pytest.mark.parametrize("suffix", [".json", ".yaml", ".txt"])
def test_json_and_yaml_are_told_apart_by_content_not_extension(story_dir, dump, suffix):
    path = story_dir / f"story{suffix}"
    path.write_text(dump(good()))
    assert load_story(path, presets=PRESETS).character.name == "Newton"


def test_the_example_story_loads():
    story = load_story(EXAMPLE, presets={"tiny"})
    assert story.character.class_word == "man"
    assert story.preset == "tiny"
    assert story.render_size() == (64, 64)
    assert story.steps == 4
    assert 4 <= len(story.scenes) <= 6
    assert all(scene.caption for scene in story.scenes)
    assert any(scene.variants == 2 for scene in story.scenes)
    assert all(path.is_file() for path in story.photo_paths())


def test_yaml_syntax_error_names_the_line(tmp_path: Path):
    path = tmp_path / "story.yaml"
    path.write_text("preset: tiny\nscenes:\n  - prompt: [unclosed\n")
    with pytest.raises(InputError, match=r"story\.yaml: line \d+, column \d+: invalid YAML"):
        load_story(path, presets=PRESETS)


def test_json_syntax_error_names_the_line(tmp_path: Path):
    path = tmp_path / "story.json"
    path.write_text('{\n  "preset": "tiny",\n  "scenes": [\n}\n')
    with pytest.raises(InputError, match=r"story\.json: line 4, column 1: invalid JSON"):
        load_story(path, presets=PRESETS)


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just words\n"])
def test_a_story_must_be_a_mapping(tmp_path: Path, text: str):
    path = tmp_path / "story.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match="a story must be a mapping"):
        load_story(path, presets=PRESETS)


def test_a_missing_story_file_is_an_input_error(tmp_path: Path):
    with pytest.raises(InputError, match="no such story file"):
        load_story(tmp_path / "nope.yaml", presets=PRESETS)


# Hostile files: each refused in a line, before the parser pays for it (see farm/documents.py).
HOSTILE = {
    "json-100000-deep": b'{"scenes": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "yaml-flow-20000-deep": b"scenes: " + b"[" * 20_000 + b"]" * 20_000,
    "yaml-block-20000-deep": b"scenes:\n" + b"- " * 20_000 + b"x\n",
    # The 600-byte billion laughs: nine levels of ten aliases, 10**9 strings once expanded.
    "yaml-aliases": b'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + b"".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n".encode()
        for i in range(8)
    ),
}


@pytest.mark.parametrize("raw", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_story_files_are_refused_in_one_line_at_once(tmp_path: Path, raw: bytes):
    path = tmp_path / "story.yaml"
    path.write_bytes(raw)
    started = time.perf_counter()
    with pytest.raises(InputError) as caught:
        load_story(path, presets=PRESETS)
    assert time.perf_counter() - started < 0.5
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    # libyaml stops flow collections 1,000 deep by itself, before the scan sees 33 levels.
    assert any(why in message for why in ("levels deep", "nesting depth", "anchors and aliases"))


def test_a_story_file_over_the_byte_limit_is_refused_before_it_is_read(story_dir: Path):
    path = story_dir / "story.json"
    path.write_text(json.dumps(good()))
    limits = DocumentLimits(max_bytes=path.stat().st_size - 1)
    with pytest.raises(InputError, match=r"story\.json: [\d,]+ bytes is over the [\d,]+-byte"):
        load_story(path, presets=PRESETS, limits=limits)
    assert load_story(path, presets=PRESETS).character.name == "Newton"


def test_the_depth_limit_is_a_setting_and_brackets_in_strings_do_not_count(story_dir: Path):
    data = good()
    data["scenes"][0]["caption"] = "[[[[{{{{ ]]"
    path = story_dir / "story.json"
    path.write_text(json.dumps(data))
    assert load_story(path, presets=PRESETS, limits=DocumentLimits(max_depth=3)).scenes
    with pytest.raises(InputError, match="nested more than 2 levels deep"):
        load_story(path, presets=PRESETS, limits=DocumentLimits(max_depth=2))


def test_a_story_file_that_is_not_utf8_is_refused(tmp_path: Path):
    path = tmp_path / "story.yaml"
    path.write_bytes(b"preset: tiny\nscenes: \xff\xfe\n")
    with pytest.raises(InputError, match=r"story\.yaml: not UTF-8 text \(byte 21\)"):
        load_story(path, presets=PRESETS)


# Photos -----------------------------------------------------------------------------------------


def test_photos_resolve_from_the_story_folder_and_must_be_files(story_dir: Path):
    data = good()
    data["character"]["photos"] = ["photos/newton_0.jpg", "photos/missing.jpg", "photos"]
    message = problems(data, source_dir=story_dir)
    assert f"character.photos[1]: photo {story_dir / 'photos/missing.jpg'} is not a file" in message
    assert f"character.photos[2]: photo {story_dir / 'photos'} is not a file" in message
    assert "photos[0]" not in message


def test_photos_are_not_checked_without_a_source_dir():
    story = parse_story(good(), presets=PRESETS)
    assert story.source_dir is None
    assert story.photo_paths() == [Path("photos/newton_0.jpg"), Path("photos/newton_1.jpg")]


def test_absolute_photo_paths_are_kept(story_dir: Path):
    data = good()
    data["character"]["photos"] = [str(story_dir / "photos/newton_0.jpg")]
    story = parse_story(data, presets=PRESETS, source_dir=Path("/elsewhere"))
    assert story.photo_paths() == [story_dir / "photos/newton_0.jpg"]


# Refusals, each naming its field ----------------------------------------------------------------


def with_change(path: str, value):
    """GOOD with the field at a dotted path (`scenes.1.seed`) set to value."""
    data = good()
    *parents, last = [int(part) if part.isdigit() else part for part in path.split(".")]
    target = data
    for part in parents:
        target = target[part]
    target[last] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("character.name", "", "character.name: string should have at least 1 character"),
        ("character.name", "x" * 81, "character.name: string should have at most 80 characters"),
        (
            "character.class_word",
            "old man",
            "character.class_word: the class word must be one word",
        ),
        ("character.class_word", "m4n", "character.class_word: the class word must be one word"),
        ("character.trigger", "im g", "character.trigger: the trigger must be one word"),
        ("character.trigger", "x" * 21, "character.trigger: the trigger must be one word"),
        ("character.trigger", "MAN", "character.trigger: the trigger word must differ from"),
        ("character.photos", [], "character.photos: list should have at least 1 item"),
        (
            "character.photos",
            ["p.jpg"] * (MAX_PHOTOS + 1),
            f"character.photos: list should have at most {MAX_PHOTOS} items",
        ),
        ("preset", "huge", "preset: unknown preset 'huge'; choose one of: sdxl-v2, tiny"),
        ("style", "vaporwave", "style: unknown style 'vaporwave'; choose one of: (No style)"),
        ("negative_prompt", "x" * 1001, "negative_prompt: string should have at most 1000"),
        ("width", 100, "width: input should be a multiple of 8"),
        ("width", 4096, "width: input should be less than or equal to 2048"),
        ("height", 32, "height: input should be greater than or equal to 64"),
        ("aspect", "5:4", "aspect: unknown aspect '5:4'"),
        ("steps", 0, "steps: input should be greater than or equal to 1"),
        ("steps", 151, "steps: input should be less than or equal to 150"),
        ("steps", 4.5, "steps: input should be a valid integer"),
        ("guidance", 31, "guidance: input should be less than or equal to 30"),
        ("style_strength", -1, "style_strength: input should be greater than or equal to 0"),
        ("style_strength", 101, "style_strength: input should be less than or equal to 100"),
        ("seed", -1, "seed: input should be greater than or equal to 0"),
        ("seed", 2**32, "seed: input should be less than or equal to 4294967295"),
        ("variants", 0, "variants: input should be greater than or equal to 1"),
        ("variants", 17, "variants: input should be less than or equal to 16"),
        ("scenes", [], "scenes: list should have at least 1 item"),
        ("scenes.1.prompt", "", "scenes[1].prompt: string should have at least 1 character"),
        ("scenes.1.prompt", "a man img " + "x" * 1000, "scenes[1].prompt: string should have at"),
        ("scenes.0.caption", "x" * 501, "scenes[0].caption: string should have at most 500"),
        ("scenes.2.seed", 2**32, "scenes[2].seed: input should be less than or equal to"),
        ("scenes.2.negative", "x" * 1001, "scenes[2].negative: string should have at most"),
        ("scenes.2.variants", 17, "scenes[2].variants: input should be less than or equal to 16"),
    ],
)
def test_a_bad_field_is_refused_naming_its_path(path, value, expected):
    message = problems(with_change(path, value))
    assert message.startswith("s.yaml: ")
    assert expected in message


def test_the_value_is_shown_shortened():
    message = problems(with_change("scenes.1.prompt", "a man img " + "x" * 2000))
    line = message.splitlines()[0]
    # scenes[1] in the file is scene 2 wherever a person reads it: the message says both.
    assert "scenes[1].prompt: " in line and "(scene 2; got 'a man img xxx" in line
    assert line.endswith("xxx...)")
    assert len(line) < 200


def test_a_missing_field_is_named():
    data = good()
    del data["character"]["class_word"]
    del data["scenes"][0]["prompt"]
    message = problems(data)
    assert "s.yaml: character.class_word: required field missing" in message
    assert "s.yaml: scenes[0].prompt: required field missing (scene 1)" in message


@pytest.mark.parametrize(
    ("path", "typo", "meant"),
    [
        ("", "varients", "variants"),
        ("character", "fase_crop", "face_crop"),
        ("scenes.0", "captoin", "caption"),
    ],
)
def test_a_misspelt_field_is_refused_with_a_suggestion(path, typo, meant):
    data = good()
    target = data
    for part in filter(None, path.split(".")):
        target = target[int(part) if part.isdigit() else part]
    target[typo] = 1
    field = f"{path.replace('.0', '[0]')}.{typo}".lstrip(".")
    assert f"s.yaml: {field}: unknown field; did you mean '{meant}'?" in problems(data)


def test_source_dir_cannot_be_set_by_the_body():
    data = good()
    data["source_dir"] = "/etc"
    assert "source_dir: unknown field" in problems(data)


def test_an_aspect_and_a_side_together_are_refused():
    data = good()
    data.update(aspect="3:2", width=512)
    assert "s.yaml: aspect: an aspect cannot be combined with width/height" in problems(data)


def test_too_many_renders_are_refused():
    data = good()
    data["variants"] = 16
    data["scenes"] = [{"prompt": "a man img"}] * (MAX_RENDERS // 16 + 1)
    assert f"at most {MAX_RENDERS} per story" in problems(data)


def test_all_problems_come_in_one_error_one_per_line():
    data = good()
    data["steps"] = 0
    data["seed"] = -1
    data["scenes"][1]["prompt"] = "img man"
    lines = problems(data).splitlines()
    assert len(lines) == 3
    assert all(line.startswith("s.yaml: ") for line in lines)


def test_a_flood_of_problems_is_cut_short():
    data = good()
    data["scenes"] = [{"prompt": "no trigger"}] * 50
    lines = problems(data).splitlines()
    assert len(lines) == 21
    assert lines[-1] == "s.yaml: ... and 30 more problems"


# The trigger word -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt",
    [
        "a man img",
        "man img walking",
        "a photo of a man img, reading",
        "A Man IMG in the rain",
        "portrait of a man img.",
        "(a man img) in a hat",
        "a woman and a man img",
    ],
)
def test_prompts_with_the_trigger_right_after_the_class_word_pass(prompt):
    data = good()
    data["scenes"] = [{"prompt": prompt}]
    parse_story(data, presets=PRESETS)


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        (
            "img man walking",
            "the trigger word 'img' must directly follow the class word 'man', "
            "e.g. 'a man img walking'",
        ),
        ("a img", "the trigger word 'img' must directly follow the class word 'man'"),
        ("a man, img", "the trigger word 'img' must directly follow the class word 'man'"),
        ("a man-img", "the trigger word 'img' must directly follow the class word 'man'"),
        ("a woman img", "the trigger word 'img' must directly follow the class word 'man'"),
        ("a man img and img", "the trigger word 'img' appears 2 times; use it once"),
        ("a man walking", "has no trigger word 'img'; write it right after the class word 'man'"),
        ("a man imgs walking", "has no trigger word 'img'"),
    ],
)
def test_misplaced_or_missing_triggers_are_refused_with_the_fix(prompt, expected):
    data = good()
    data["scenes"][2]["prompt"] = prompt
    assert f"s.yaml: scenes[2].prompt: {expected}" in problems(data)


def test_a_custom_trigger_is_what_prompts_must_use():
    data = good()
    data["character"].update(class_word="woman", trigger="ohwx")
    data["scenes"] = [{"prompt": "a woman ohwx"}, {"prompt": "a woman img"}]
    message = problems(data)
    assert "scenes[0]" not in message
    assert "scenes[1].prompt: has no trigger word 'ohwx'" in message


# The plan ---------------------------------------------------------------------------------------


def test_plan_has_every_scene_and_variant_in_order_with_styles_applied():
    data = good()
    data.update(style="comic-book", variants=2, negative_prompt="blurry")
    story = parse_story(data, presets=PRESETS)
    assert story.style == "Comic book"
    plan = story.plan()
    assert [(r.scene_index, r.variant) for r in plan] == [
        (0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1),
    ]  # fmt: skip
    first = plan[0]
    assert isinstance(first, PlannedRender)
    assert first == PlannedRender(
        scene_index=0,
        variant=0,
        prompt=styles.apply_style("Comic book", GOOD["scenes"][0]["prompt"], "")[0],
        negative=styles.STYLES["Comic book"][1] + " blurry",
        seed=derive_seed(0, 0, 0),
        caption="Chapter 1",
    )
    assert first.prompt.startswith("comic a photo of a man img reading in a library . ")
    # A scene's own negative replaces the story's; the style's is still prepended.
    assert plan[-1].negative == styles.STYLES["Comic book"][1] + " daylight"


def test_derive_seed_is_the_first_four_bytes_of_a_sha256():
    expected = int.from_bytes(hashlib.sha256(b"42:3:1").digest()[:4], "big")
    assert derive_seed(42, 3, 1) == expected
    assert derive_seed(0, 0, 0) == 0xE8CA2BD5  # pinned: must never change between releases


def test_seeds_are_deterministic_and_distinct():
    data = good()
    data.update(seed=1234, variants=2)
    first = [r.seed for r in parse_story(data, presets=PRESETS).plan()]
    again = [r.seed for r in parse_story(copy.deepcopy(data), presets=PRESETS).plan()]
    assert first == again
    assert len(set(first)) == len(first)
    assert all(0 <= seed < 2**32 for seed in first)


def test_a_scenes_own_seed_counts_up_by_variant():
    seeds = {
        (r.scene_index, r.variant): r.seed for r in parse_story(good(), presets=PRESETS).plan()
    }
    assert [seeds[1, v] for v in range(3)] == [7, 8, 9]


def test_an_explicit_seed_wraps_within_range():
    data = good()
    data["scenes"][1]["seed"] = 2**32 - 1
    plan = parse_story(data, presets=PRESETS).plan()
    assert [r.seed for r in plan if r.scene_index == 1] == [2**32 - 1, 0, 1]


def test_adding_scenes_leaves_other_scenes_seeds_alone():
    short = parse_story(good(), presets=PRESETS)
    longer_data = good()
    longer_data["scenes"] += [{"prompt": "a man img sleeping"}, {"prompt": "a man img waking"}]
    longer_data["scenes"][1]["variants"] = 1  # another scene's variants change too
    longer = parse_story(longer_data, presets=PRESETS)
    before = {(r.scene_index, r.variant): r.seed for r in short.plan()}
    after = {(r.scene_index, r.variant): r.seed for r in longer.plan()}
    for key in [(0, 0), (2, 0)]:
        assert after[key] == before[key]


def test_a_different_base_seed_changes_the_derived_seeds():
    data = good()
    data["seed"] = 1
    one = parse_story(data, presets=PRESETS).plan()
    data["seed"] = 2
    two = parse_story(data, presets=PRESETS).plan()
    assert one[0].seed != two[0].seed
    assert one[1].seed == two[1].seed == 7  # scene 1 names its own seed


# Sizes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "size"),
    [
        ({}, (1024, 1024)),
        ({"width": 64, "height": 128}, (64, 128)),
        ({"width": 512}, (512, 1024)),
        ({"aspect": "16:9"}, (1024, 576)),
        ({"aspect": "Widescreen TV / Portrait (9:16)"}, (576, 1024)),
    ],
)
def test_render_size(fields, size):
    data = good()
    data.update(fields)
    assert parse_story(data, presets=PRESETS).render_size() == size


def test_aspect_is_stored_under_its_canonical_name():
    data = good()
    data["aspect"] = "3:2"
    assert parse_story(data, presets=PRESETS).aspect == "35mm film / Landscape (3:2)"


# As an API body ---------------------------------------------------------------------------------


def test_the_model_round_trips_through_json_without_source_dir(story_dir: Path):
    story = parse_story(good(), presets=PRESETS, source_dir=story_dir)
    body = story.model_dump(mode="json")
    assert "source_dir" not in body
    again = Story.model_validate_json(json.dumps(body))
    assert again.model_dump() == story.model_dump()
    assert again.source_dir is None


def test_the_json_schema_describes_the_body():
    schema = Story.model_json_schema()
    assert set(schema["required"]) == {"character", "preset", "scenes"}
    assert schema["additionalProperties"] is False
    assert "source_dir" not in schema["properties"]
    json.dumps(schema)


def test_without_a_context_preset_and_photos_are_not_checked():
    data = good()
    data["preset"] = "anything"
    assert Story.model_validate(data).preset == "anything"


CAST_STORY = {
    "character": {"name": "N", "class_word": "man", "trigger": "img1", "photos": ["a.jpg"]},
    "cast": [{"name": "A", "class_word": "woman", "trigger": "img2", "photos": ["b.jpg"]}],
    "preset": "tiny",
    "scenes": [{"prompt": "a man img1 and a woman img2 at a table"}, {"prompt": "a woman img2"}],
}


def test_a_cast_shares_scenes_and_each_scene_names_some_of_it():
    story = parse_story(CAST_STORY, presets={"tiny"})
    assert [c.name for c in story.characters] == ["N", "A"]


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("a man img1 and a woman img3", "unknown trigger word 'img3'"),
        ("a cat on a mat", "names no character"),
        ("a woman img1", "must directly follow the class word 'man'"),
        ("a man img1 and img2 woman", "must directly follow the class word 'woman'"),
    ],
)
def test_cast_scenes_say_which_trigger_is_unknown_or_misplaced(prompt, message):
    with pytest.raises(InputError, match=message):
        parse_story({**CAST_STORY, "scenes": [{"prompt": prompt}]}, presets={"tiny"})


def test_every_character_needs_its_own_trigger():
    taken = {**CAST_STORY["cast"][0], "trigger": "IMG1"}
    with pytest.raises(InputError, match="already taken"):
        parse_story({**CAST_STORY, "cast": [taken]}, presets={"tiny"})
