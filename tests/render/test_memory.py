"""VRAM modes: which one a card gets, where each model's weights are while the pipeline runs, and
that no mode changes a pixel. On a CPU the "device" is the CPU too, but weights away from it
hold NaN stand-ins, so a forward that ran with an absent weight would fail here as on a GPU."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from farm.errors import InputError
from farm.render.loading import LoadedPreset, load_preset, pick_vram_mode
from farm.render.memory import GIB, LayerOffload, ModelOffload, VramMode, apply_vram_mode
from farm.render.memory import choose_vram_mode as choose
from farm.render.pipeline import SceneRender
from farm.render.presets import get_preset
from farm.settings import VRAM_MODES, Settings
from tests.fixtures.tiny import photos_of

SCENES = [SceneRender("a man img reading", "lowres", 1), SceneRender("a man img", "", 2)]
OPTIONS = dict(height=64, width=64, steps=3, guidance=5.0)


@pytest.fixture(scope="module")
def own_tiny(models_dir: Path) -> LoadedPreset:
    """A tiny preset of this module's own: placing it must not disturb the shared one."""
    return load_preset(get_preset("tiny"), models_dir, device="cpu")


@pytest.fixture
def placed(own_tiny: LoadedPreset) -> Iterator[LoadedPreset]:
    yield own_tiny
    apply_vram_mode(own_tiny.pipeline, VramMode.FULL)


def render(loaded: LoadedPreset) -> np.ndarray:
    identity = loaded.identity.tokens_for(photos_of("newton_man", 2))
    images = loaded.pipeline(SCENES, {"img": identity}, **OPTIONS).images
    return np.stack([np.asarray(image).astype(np.int16) for image in images])


def stand_in(tensor: torch.Tensor) -> bool:
    return all(stride == 0 for stride in tensor.stride())


def away(module: nn.Module) -> bool:
    return all(stand_in(p) for p in module.parameters())


def present(module: nn.Module) -> bool:
    return not any(stand_in(p) for p in module.parameters())


# --- choosing a mode -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("free_gib", "total_gib", "size", "batch", "mode"),
    [
        (79, 80, 1024, 2, VramMode.FULL),  # an H100
        (15.5, 16, 1024, 2, VramMode.FULL),
        (15.5, 16, 1024, 4, VramMode.MODEL_OFFLOAD),
        (11.6, 12, 1024, 1, VramMode.FULL),  # the reference's 11 GB
        (11.6, 12, 1024, 2, VramMode.MODEL_OFFLOAD),
        (7.6, 8, 1024, 1, VramMode.MODEL_OFFLOAD),  # an 8 GB card after the CUDA context
        (6.6, 8, 1024, 1, VramMode.SEQUENTIAL_OFFLOAD),  # 8 GB with a desktop on it
        (6.6, 8, 512, 1, VramMode.MODEL_OFFLOAD),  # smaller pictures: the UNet still fits
        (3.5, 4, 768, 1, VramMode.SEQUENTIAL_OFFLOAD),
    ],
)
def test_the_fastest_mode_that_fits_the_free_memory_is_chosen(
    free_gib, total_gib, size, batch, mode
):
    free, total = int(free_gib * GIB), int(total_gib * GIB)
    assert choose(free, total, height=size, width=size, batch=batch) is mode


def test_memory_held_by_another_process_counts_against_the_card():
    # The same 80 GB card, with 70 GB taken by someone else.
    assert choose(10 * GIB, 80 * GIB, height=1024, width=1024, batch=1) is VramMode.MODEL_OFFLOAD


def test_modes_step_down_in_order_and_end():
    assert VramMode.FULL.lower() is VramMode.MODEL_OFFLOAD
    assert VramMode.MODEL_OFFLOAD.lower() is VramMode.SEQUENTIAL_OFFLOAD
    assert VramMode.SEQUENTIAL_OFFLOAD.lower() is None


def test_the_setting_names_every_mode_and_auto():
    assert set(VRAM_MODES) == {"auto", *VramMode}
    assert Settings.from_env({}).vram_mode == "auto"
    assert Settings.from_env({"FARM_VRAM_MODE": "Model-Offload"}).vram_mode == "model-offload"
    with pytest.raises(InputError, match="FARM_VRAM_MODE must be one of auto, full"):
        Settings.from_env({"FARM_VRAM_MODE": "tiny"})


def test_a_named_mode_is_used_as_is_and_auto_is_full_on_a_cpu():
    preset = get_preset("tiny")
    cpu = torch.device("cpu")
    assert pick_vram_mode("sequential-offload", cpu, preset) is VramMode.SEQUENTIAL_OFFLOAD
    assert pick_vram_mode("auto", cpu, preset) is VramMode.FULL


# --- placing the models ----------------------------------------------------------------------


def test_model_offload_keeps_only_the_running_model_on_the_device(placed):
    pipeline = placed.pipeline
    full = render(placed)
    apply_vram_mode(pipeline, VramMode.MODEL_OFFLOAD)
    assert isinstance(pipeline.offload, ModelOffload)
    assert all(away(m) for m in (pipeline.unet, pipeline.vae, pipeline.text_encoder))
    seen: list[str] = []

    def unet_runs(*_):
        seen.append("unet")
        assert present(pipeline.unet)
        assert away(pipeline.text_encoder) and away(pipeline.text_encoder_2)
        assert away(pipeline.vae) and away(pipeline.id_encoder.vision_model)

    def vae_runs(*_):
        seen.append("vae")
        assert present(pipeline.vae) and away(pipeline.unet)

    hooks = [
        pipeline.unet.register_forward_pre_hook(unet_runs),
        pipeline.vae.decoder.register_forward_pre_hook(vae_runs),
    ]
    try:
        offloaded = render(placed)
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == ["unet"] * 3 + ["vae"] * 2  # the VAE is sliced: one image at a time
    assert np.abs(offloaded - full).max() <= 1
    # The ID encoder's fuse module runs through a method, not forward: it never leaves.
    assert present(pipeline.id_encoder.fuse_module)


def test_sequential_offload_brings_each_layer_just_for_its_forward(placed):
    pipeline = placed.pipeline
    full = render(placed)
    apply_vram_mode(pipeline, VramMode.SEQUENTIAL_OFFLOAD)
    assert isinstance(pipeline.offload, LayerOffload)
    assert pipeline.vae.use_tiling and pipeline.vae.use_slicing
    checked: list[bool] = []

    def conv_in_runs(module, _):
        checked.append(present(module) and away(pipeline.unet.conv_out))

    hook = pipeline.unet.conv_in.register_forward_pre_hook(conv_in_runs)
    try:
        offloaded = render(placed)
    finally:
        hook.remove()
    assert checked == [True] * 3
    assert away(pipeline.unet) and away(pipeline.vae)  # everything went home afterwards
    assert np.abs(offloaded - full).max() <= 1


def test_identity_tokens_are_the_same_with_the_vision_tower_offloaded(placed):
    photos = photos_of("newton_man", 2)
    engine = placed.identity
    full = engine.compute(photos, False, "newton")
    for mode in (VramMode.MODEL_OFFLOAD, VramMode.SEQUENTIAL_OFFLOAD):
        apply_vram_mode(placed.pipeline, mode)
        torch.testing.assert_close(engine.compute(photos, False, "newton").tokens, full.tokens)


def test_going_back_to_full_restores_every_weight(placed):
    pipeline = placed.pipeline
    before = {k: v.clone() for k, v in pipeline.unet.state_dict().items()}
    apply_vram_mode(pipeline, VramMode.SEQUENTIAL_OFFLOAD)
    apply_vram_mode(pipeline, VramMode.MODEL_OFFLOAD)
    apply_vram_mode(pipeline, VramMode.FULL)
    assert pipeline.offload is None
    assert not pipeline.vae.use_slicing and not pipeline.vae.use_tiling
    after = pipeline.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_dtype_change_while_offloaded_is_kept(placed):
    """The VAE's fp32 upcast may happen while it is away: it must come back in fp32."""
    pipeline = placed.pipeline
    apply_vram_mode(pipeline, VramMode.MODEL_OFFLOAD)
    pipeline.vae.to(torch.float64)
    try:
        pipeline.offload.bring(pipeline.vae)
        assert all(p.dtype == torch.float64 and not stand_in(p) for p in pipeline.vae.parameters())
    finally:
        pipeline.vae.to(torch.float32)
