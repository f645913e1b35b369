"""The content hash: one value per recipe, blind to what does not decide pixels, and stable when
a new field is added at its default."""

from __future__ import annotations

import dataclasses

import pytest

from farm.render.presets import PRESETS
from farm.render_hash import Lora, Person, model_files, photos_identity, render_hash

BASE = {
    "preset": "tiny",
    "model_files": model_files(PRESETS["tiny"]),
    "people": [Person("img", "man", photos_identity(["a" * 64], crop=False))],
    "prompt": "a man img reading",
    "negative": "blurry",
    "width": 64,
    "height": 64,
    "steps": 2,
    "guidance": 5.0,
    "style_strength": 20,
    "scheduler": "default",
    "seed": 7,
}
EXPECTED = render_hash(**BASE)
# What the pinned test's recipes hash to, for good (see that test).
PLAIN = "b687804135931f006ec29175aaf54d6220e7e3d09a0474dbf2bdbaacde557396"
FULL = "45ff0cb3a18a76a4d7194a92b5dd392be7f0b6ddc17c7a673575ca8c1aec5971"


def test_same_recipe_same_hash_and_defaults_change_nothing() -> None:
    assert render_hash(**BASE) == EXPECTED
    # Defaults of the optional fields, and ints for floats, are the same recipe.
    same = {**BASE, "guidance": 5, "style_strength": 20.0, "loras": (), "qc": None, "extra": {}}
    assert render_hash(**same, noise=None, prompt_truncation=None) == EXPECTED
    # A future field under `extra`, at its default, leaves every hash as it was.
    assert render_hash(**BASE, extra={"controlnet": None, "outfit": {}}) == EXPECTED


@pytest.mark.parametrize(
    "change",
    [
        {"preset": "tiny-v1"},
        {"model_files": model_files(PRESETS["photomaker-v2"])},
        {"people": [Person("img", "woman", photos_identity(["a" * 64], crop=False))]},
        {"people": [Person("img", "man", photos_identity(["a" * 64], crop=True))]},
        {"prompt": "a man img writing"},
        {"negative": ""},
        {"width": 72},
        {"steps": 3},
        {"guidance": 5.5},
        {"style_strength": 30},
        {"scheduler": "lcm"},
        {"seed": 8},
        {"loras": [Lora("repo/file.safetensors", 0.8)]},
        {"qc": {"min_face_similarity": 0.5, "retries": 2}},
        {"noise": "device"},
        {"extra": {"controlnet": {"pose": "b" * 64, "weight": 0.7}}},
    ],
)
def test_every_part_of_the_recipe_changes_the_hash(change: dict) -> None:
    assert render_hash(**{**BASE, **change}) != EXPECTED


def test_model_files_name_the_weights_behind_a_preset() -> None:
    tiny = PRESETS["tiny"]
    assert model_files(tiny) == model_files(PRESETS["tiny-fast"])  # same files; the LoRA is apart
    assert model_files(tiny) != model_files(dataclasses.replace(tiny, version=1))
    real = PRESETS["photomaker-v2"]
    assert model_files(real) != model_files(real, "my/finetuned-sdxl")


def test_the_hash_of_a_recipe_never_changes() -> None:
    """Hashes are stored with every render and compared with those of later submissions: a
    change to how the document is written would make every finished render look new. Pinned
    for a plain recipe and for one with every optional part, some parts at their defaults."""
    pinned = {**BASE, "model_files": "f" * 64}
    assert render_hash(**pinned) == PLAIN
    full = render_hash(
        **pinned,
        loras=[Lora("a/b.safetensors", 1.0)],
        qc={"min_face_similarity": 0.5, "retries": 2},
        extra={
            "consistency": {"mode": "story", "window": None, "blocks": []},
            "control": {"kind": "openpose", "scale": 0.8},
        },
    )
    assert full == FULL
