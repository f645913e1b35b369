"""The out-of-memory ladder of `LoadedPreset.render`: smaller batches first, then lower VRAM
modes, and an error only when one render does not fit in the lowest mode. There is no GPU
here, so the card is pretended: the tiny pipeline raises CUDA's out-of-memory error for
batches larger than what its current mode is said to fit."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from farm.errors import InputError
from farm.recipe import RenderSettings
from farm.render.loading import LoadedPreset, load_preset
from farm.render.memory import LayerOffload, ModelOffload, VramMode, apply_vram_mode
from farm.render.pipeline import PhotoMakerPipeline, SceneRender
from farm.render.presets import get_preset
from tests.fixtures.tiny import photos_of

SCENES = [
    SceneRender(f"a man img {place}", "lowres", seed)
    for seed, place in enumerate(
        ["reading", "in the garden", "at the window", "under an apple tree"]
    )
]
SETTINGS = RenderSettings("tiny", 64, 64, 2, 5.0, "", 20.0)


class PretendCard(PhotoMakerPipeline):
    """The real pipeline (sharing its models), on a card where a mode fits `fits[mode]` renders
    per batch (0: not even one). Records every batch it is asked for."""

    def __init__(self, real: PhotoMakerPipeline, fits: dict[VramMode, int]) -> None:
        vars(self).update(vars(real))
        self.fits = fits
        self.asked: list[tuple[VramMode, int]] = []

    @property
    def mode(self) -> VramMode:
        kinds = {ModelOffload: VramMode.MODEL_OFFLOAD, LayerOffload: VramMode.SEQUENTIAL_OFFLOAD}
        return kinds.get(type(self.offload), VramMode.FULL)

    def __call__(self, renders, identities, **kwargs):
        self.asked.append((self.mode, len(renders)))
        if len(renders) > self.fits.get(self.mode, 0):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().__call__(renders, identities, **kwargs)


@pytest.fixture(scope="module")
def own_tiny(models_dir: Path) -> LoadedPreset:
    """A tiny preset of this module's own: stepping down must not disturb the shared one."""
    return load_preset(get_preset("tiny"), models_dir, device="cpu")


@pytest.fixture(scope="module")
def identities(own_tiny):
    return {"img": own_tiny.identity.tokens_for(photos_of("newton_man", 2))}


@pytest.fixture(scope="module")
def one_by_one(own_tiny, identities) -> np.ndarray:
    return pixels([own_tiny.render([s], SETTINGS, identities).images[0] for s in SCENES])


@pytest.fixture
def card(own_tiny: LoadedPreset) -> Iterator[Callable[[dict[VramMode, int]], LoadedPreset]]:
    made: list[PretendCard] = []

    def on(fits: dict[VramMode, int]) -> LoadedPreset:
        made.append(PretendCard(own_tiny.pipeline, fits))
        return dataclasses.replace(own_tiny, pipeline=made[-1])

    yield on
    for pretend in made:  # the placement is the pretend card's; the models are shared
        apply_vram_mode(pretend, VramMode.FULL)


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image).astype(np.int16) for image in images])


def test_a_batch_that_does_not_fit_is_halved_and_the_size_is_kept(card, identities, one_by_one):
    loaded = card({VramMode.FULL: 1})
    result = loaded.render(SCENES, SETTINGS, identities)
    full = VramMode.FULL
    assert loaded.pipeline.asked == [
        (full, 4),
        (full, 2),
        (full, 1),
        (full, 1),
        (full, 1),
        (full, 1),
    ]
    assert loaded.max_batch == 1 and loaded.vram_mode is full
    assert np.abs(pixels(result.images) - one_by_one).max() <= 1
    assert result.timings["denoise"] > 0
    loaded.pipeline.asked.clear()
    loaded.render(SCENES[:2], SETTINGS, identities)
    assert loaded.pipeline.asked == [(full, 1), (full, 1)]  # learnt: no second failure


def test_when_one_render_does_not_fit_the_mode_steps_down(card, identities, one_by_one):
    loaded = card({VramMode.MODEL_OFFLOAD: 2})
    result = loaded.render(SCENES[:2], SETTINGS, identities)
    full, offload = VramMode.FULL, VramMode.MODEL_OFFLOAD
    # Whole batches are tried again in the lower mode: it may fit what the higher one did not.
    assert loaded.pipeline.asked == [(full, 2), (full, 1), (offload, 2)]
    assert loaded.vram_mode is offload and loaded.max_batch is None
    assert isinstance(loaded.pipeline.offload, ModelOffload)
    assert np.abs(pixels(result.images) - one_by_one[:2]).max() <= 1


def test_only_one_render_failing_in_the_lowest_mode_raises(card, identities):
    loaded = card({})
    with pytest.raises(torch.OutOfMemoryError):
        loaded.render(SCENES[:2], SETTINGS, identities)
    full, offload, layers = list(VramMode)
    assert loaded.pipeline.asked == [
        (full, 2),
        (full, 1),
        (offload, 2),
        (offload, 1),
        (layers, 2),
        (layers, 1),
    ]
    assert loaded.vram_mode is layers


def test_other_errors_are_not_retried(card, identities):
    loaded = card({VramMode.FULL: 4})
    with pytest.raises(InputError, match="steps must be at least 1"):
        loaded.render(SCENES, dataclasses.replace(SETTINGS, steps=0), identities)
    assert loaded.pipeline.asked == [(VramMode.FULL, 4)]
