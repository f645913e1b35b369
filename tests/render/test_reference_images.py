"""Reference images of outfits and locations, on the tiny preset: a scene wearing the outfit
attends to its images' tokens (they change its pixels, by the story's strength), a scene that
does not is untouched to the byte, and the tokens are stored once and read by other workers."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from farm.composition import Dressing
from farm.consistency import Consistency
from farm.controls import decode_control
from farm.identity.photos import content_hash
from farm.identity.tokens import IdentityTokens
from farm.recipe import render_filename
from farm.render.consistency import ConsistentAttention
from farm.render.loading import load_preset
from farm.render.memory import VramMode, apply_vram_mode
from farm.render.pipeline import SceneRender
from farm.render.presets import PRESETS, get_preset
from farm.render.reference_images import ReferenceImageTokens
from farm.render.story_render import render_story
from farm.storage.local import LocalStorage
from farm.story import load_story, parse_story
from tests.fixtures.tiny import REFS, photos_of
from tests.test_reference_images import story_file

SIZE = dict(height=64, width=64, steps=2, guidance=5.0)
COAT = REFS / "scarletthead_woman"  # any real picture works as an outfit's image


def coat(settings: Consistency | None = None, image: int = 0) -> Dressing:
    path = sorted(COAT.iterdir())[image]
    data = path.read_bytes()
    pixels = decode_control(data, path.name)
    # A window that covers both steps: the default skips the first 4% (step 0 of 2).
    settings = settings or Consistency(window=(0.0, 1.0))
    return Dressing("wearing a red coat", ("sha256:" + content_hash(data),), settings, (pixels,))


@pytest.fixture(scope="module")
def newton(tiny) -> IdentityTokens:
    return tiny.identity.tokens_for(photos_of("newton_man", 1))


def images(tiny, identity, renders, attention=None) -> list[np.ndarray]:
    result = tiny.pipeline(renders, {"img": identity}, consistency=attention, **SIZE)
    return [np.asarray(image).astype(np.int16) for image in result.images]


def scene(seed: int, *dressing: Dressing) -> SceneRender:
    return SceneRender("a man img reading, wearing a red coat", "lowres", seed, dressing=dressing)


def test_a_scene_wearing_an_outfit_with_images_attends_to_them(tiny, newton) -> None:
    plain, dressed, other = images(
        tiny, newton, [scene(7), scene(7, coat()), scene(7, coat(None, 1))]
    )
    assert np.abs(plain - dressed).max() > 0  # the image's tokens reach the attention
    assert np.abs(dressed - other).max() > 0  # and which image it is matters
    # At a vanishing strength the image's tokens weigh nothing: the render is the plain one.
    faint = coat(Consistency(window=(0.0, 1.0), strength=1e-30))
    (barely,) = images(tiny, newton, [scene(7, faint)])
    (alone,) = images(tiny, newton, [scene(7)])
    assert np.abs(barely - alone).max() <= 1


def test_a_scene_not_wearing_it_is_untouched_to_the_byte(tiny, newton) -> None:
    without = images(tiny, newton, [scene(3), scene(4)])
    mixed = images(tiny, newton, [scene(3, coat()), scene(4)])
    assert np.array_equal(mixed[1], without[1])
    assert not np.array_equal(mixed[0], without[0])


def test_the_tokens_are_stored_once_and_read_by_another_worker(tiny, newton, tmp_path) -> None:
    storage = LocalStorage(tmp_path)
    pipeline = tiny.pipeline
    own = pipeline.reference_images
    try:
        first = pipeline.reference_images = ReferenceImageTokens("tiny", storage)
        (made,) = images(tiny, newton, [scene(5, coat())])
        assert (first.computed, first.loaded) == (1, 0)
        assert any(key.startswith("reference-images/") for key in storage.list("reference-images/"))
        second = pipeline.reference_images = ReferenceImageTokens("tiny", storage)
        (read,) = images(tiny, newton, [scene(5, coat())])
        assert (second.computed, second.loaded) == (0, 1)
        assert np.array_equal(made, read)
        # Another setting is another key: computed, never read stale.
        (_,) = images(tiny, newton, [scene(5, coat(Consistency(window=(0.5, 1.0))))])
        assert second.computed == 1
    finally:
        pipeline.reference_images = own


def test_story_mode_reads_reference_scenes_and_images_together(tiny, newton) -> None:
    settings = Consistency(mode="story", window=(0.0, 1.0))
    record = ConsistentAttention(settings, record=True)
    images(tiny, newton, [scene(1), scene(2)], record)
    assert record.recorded is not None
    reading = ConsistentAttention(settings, reading=record.recorded)
    plain, dressed = images(tiny, newton, [scene(9), scene(9, coat(settings))], reading)
    assert np.abs(plain - dressed).max() > 0
    # The same batch without the outfit (one of a batch of two: a batch of one may round
    # otherwise on some CPUs, images or not).
    again, _ = images(
        tiny, newton, [scene(9), scene(9)], ConsistentAttention(settings, reading=record.recorded)
    )
    assert np.array_equal(plain, again)


def test_farm_render_reads_the_images_beside_the_story_file(tiny, tmp_path) -> None:
    """`farm render`'s path: the images read beside the story, attached to the renders that
    use them; the scene without them is the story-without-images' render, to the byte."""
    path = story_file(tmp_path)  # scene 1 wears the coat and is set in the hall; scene 2 not
    with_images = load_story(path, presets=PRESETS)
    data = yaml.safe_load(path.read_text())
    del data["character"]["outfits"]["coat"]["images"], data["locations"]["hall"]["images"]
    without = parse_story(data, presets=PRESETS, source_dir=tmp_path)
    render_story(with_images, tmp_path / "with", tiny)
    render_story(without, tmp_path / "without", tiny)
    first, second = (render_filename(scene, 0) for scene in range(2))
    assert (tmp_path / "with" / second).read_bytes() == (tmp_path / "without" / second).read_bytes()
    assert (tmp_path / "with" / first).read_bytes() != (tmp_path / "without" / first).read_bytes()


@pytest.mark.parametrize("mode", [VramMode.MODEL_OFFLOAD, VramMode.SEQUENTIAL_OFFLOAD])
def test_the_images_encode_with_the_vae_offloaded(models_dir, mode) -> None:
    """The VAE's encoder brings it to the device as its decoder does (`farm.render.memory`)."""
    loaded = load_preset(get_preset("tiny"), models_dir, device="cpu")  # placed: not shared
    identity = loaded.identity.tokens_for(photos_of("newton_man", 1))
    (full,) = images(loaded, identity, [scene(5, coat())])
    apply_vram_mode(loaded.pipeline, mode)
    loaded.pipeline.reference_images = ReferenceImageTokens("tiny")  # made again, offloaded
    (offloaded,) = images(loaded, identity, [scene(5, coat())])
    assert loaded.pipeline.reference_images.computed == 1
    assert np.abs(offloaded - full).max() <= 1
