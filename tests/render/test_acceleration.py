"""The render path's speed-ups change how the pipeline computes, never what: fused projections,
SDPA, channels-last, a compiled UNet; and the VAE's guard against half-precision overflow."""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import FusedAttnProcessor2_0

from farm.identity.checkpoint import encoder_from_checkpoint, read_checkpoint
from farm.render.acceleration import (
    accelerate,
    compile_unet_forward,
    compile_wanted,
    is_compiled,
    projections_fused,
    uncompile_unet,
)
from farm.render.loading import LoadedPreset, load_sdxl, vae_dtype, warm_up
from farm.render.lora import fuse_unet_lora
from farm.render.memory import VramMode, apply_vram_mode
from farm.render.pipeline import PhotoMakerPipeline, SceneRender
from farm.render.presets import get_preset, locate
from farm.settings import Settings
from tests.fixtures.tiny import photos_of

CPU = torch.device("cpu")
OPTIONS = dict(height=64, width=64, steps=3, guidance=5.0)


def plain_pipeline(models_dir: Path) -> PhotoMakerPipeline:
    """The tiny preset as `load_preset` builds it, up to (not including) `accelerate`."""
    files = locate(get_preset("tiny"), models_dir)
    parts = load_sdxl(files.sdxl_dir, CPU, torch.float32)
    checkpoint = read_checkpoint(files.checkpoint)
    fuse_unet_lora(parts["unet"], checkpoint.lora_weights)
    encoder = encoder_from_checkpoint(checkpoint, 2)
    return PhotoMakerPipeline(**parts, id_encoder=encoder)


@pytest.fixture
def plain(models_dir: Path) -> PhotoMakerPipeline:
    return plain_pipeline(models_dir)


@pytest.fixture(scope="module")
def identities(tiny):
    return {"img": tiny.identity.tokens_for(photos_of("newton_man", 2))}


def render(pipeline: PhotoMakerPipeline, identities, seeds=(1, 2)) -> np.ndarray:
    renders = [SceneRender("a man img reading", "lowres", seed) for seed in seeds]
    images = pipeline(renders, identities, **OPTIONS).images
    return np.stack([np.asarray(image).astype(np.int16) for image in images])


def test_accelerate_fuses_projections_and_keeps_the_pixels(plain, identities):
    before = render(plain, identities)
    accelerate(plain)
    assert projections_fused(plain.unet) and projections_fused(plain.vae)
    processors = {*plain.unet.attn_processors.values(), *plain.vae.attn_processors.values()}
    assert {type(p) for p in processors} == {FusedAttnProcessor2_0}
    attn1 = plain.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1
    attn2 = plain.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2
    # The unfused copies are gone: on SDXL they would hold 1.2 GiB of the GPU for nothing.
    assert not any(hasattr(attn1, name) for name in ("to_q", "to_k", "to_v"))
    assert hasattr(attn2, "to_q") and not hasattr(attn2, "to_k")
    assert plain.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert plain.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert np.abs(render(plain, identities) - before).max() <= 1


def test_accelerating_twice_changes_nothing(plain):
    accelerate(plain)
    weight = plain.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_qkv.weight
    accelerate(plain)
    again = plain.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_qkv.weight
    assert again is weight


def test_loras_are_fused_before_the_projections_and_placement_after(plain):
    apply_vram_mode(plain, VramMode.MODEL_OFFLOAD)
    with pytest.raises(RuntimeError, match="before apply_vram_mode"):
        accelerate(plain)
    apply_vram_mode(plain, VramMode.FULL)
    accelerate(plain)
    with pytest.raises(RuntimeError, match="fuse LoRAs before accelerate"):
        fuse_unet_lora(plain.unet, {})


@pytest.mark.parametrize(
    ("setting", "device", "wanted"),
    [
        ("off", "cuda", False),
        ("on", "cuda", True),
        ("on", "cpu", False),  # compiling costs a CPU more than it saves
        ("force", "cpu", True),
    ],
)
def test_compile_setting(setting, device, wanted):
    assert compile_wanted(setting, torch.device(device)) is wanted


def test_compile_setting_is_read_from_the_environment():
    assert Settings.from_env({}).compile_unet == "off"
    assert Settings.from_env({"FARM_COMPILE": "on"}).compile_unet == "on"


def test_the_unet_is_compiled_once(plain):
    accelerate(plain, compile_unet=True)
    compiled = vars(plain.unet)["forward"]
    accelerate(plain, compile_unet=True)
    assert is_compiled(plain.unet) and vars(plain.unet)["forward"] is compiled
    uncompile_unet(plain)
    assert not is_compiled(plain.unet)


@pytest.mark.slow
def test_the_compiled_unet_traces_whole_and_warm_up_compiles_each_batch_shape(
    plain, identities, tiny
):
    """`fullgraph=True`: a graph break anywhere in the UNet (the fused processors, the added
    time embedding) fails here. Dynamo's eager backend traces as inductor would, without
    generating kernels, which a CPU cannot afford in a test."""
    before = render(plain, identities, seeds=(1,))
    accelerate(plain)
    compile_unet_forward(plain, backend="eager")
    preset = dataclasses.replace(tiny.preset, batch_size=2)
    loaded = LoadedPreset(preset, plain, tiny.identity, CPU, 0.0)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    stats = torch._dynamo.utils.counters["stats"]
    warm_up(loaded)
    assert stats["unique_graphs"] == 2  # the preset's batch and a single render
    assert np.abs(render(plain, identities, seeds=(1,)) - before).max() <= 1
    assert stats["unique_graphs"] == 2  # nothing compiled after the warm-up


# --- the VAE in half precision -------------------------------------------------------------


def test_the_vae_is_kept_in_fp32_only_where_fp16_would_overflow():
    assert vae_dtype(torch.float16, force_upcast=True) == torch.float32  # SDXL's VAE
    assert vae_dtype(torch.float16, force_upcast=False) == torch.float16  # an fp16-fix VAE
    assert vae_dtype(torch.bfloat16, force_upcast=True) == torch.bfloat16  # fp32's range
    assert vae_dtype(torch.float32, force_upcast=True) == torch.float32


def overflowing_fp16_vae(pipeline: PhotoMakerPipeline):
    """The tiny VAE made to overflow as SDXL's does in fp16: its first decoder layer's
    activations go past fp16's 65504 (the weights themselves still fit), which fp32 holds."""
    vae = copy.deepcopy(pipeline.vae)
    with torch.no_grad():
        vae.decoder.conv_in.weight.mul_(1e3)
        vae.decoder.conv_in.bias.mul_(1e3)
    vae.register_to_config(force_upcast=False)  # what an "fp16-fix" VAE declares
    return vae.half()


def test_a_half_precision_vae_that_overflows_decodes_again_in_fp32(tiny, caplog):
    pipeline = copy.copy(tiny.pipeline)  # shares the models; only the VAE is replaced
    pipeline.vae = overflowing_fp16_vae(tiny.pipeline)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 100
    factor = pipeline.vae.config.scaling_factor
    with torch.no_grad():
        half = pipeline.vae.decode(latents.half() / factor).sample
        assert not torch.isfinite(half).all()  # it does overflow
        expected = copy.deepcopy(pipeline.vae).float().decode(latents / factor).sample
    assert torch.isfinite(expected).all()
    with caplog.at_level(logging.WARNING, logger="farm.render.pipeline"):
        images = pipeline.decode_latents(latents)
    assert "the VAE overflowed in torch.float16" in caplog.text
    assert pipeline.vae.dtype == torch.float32  # for good: it would overflow again
    pixels = np.stack([np.asarray(image) for image in images]).astype(np.int16)
    want = ((expected / 2 + 0.5).clamp(0, 1) * 255).round().permute(0, 2, 3, 1).numpy()
    assert np.abs(pixels - want).max() <= 1
    assert pixels.std() > 0  # not a black picture


def test_a_vae_that_asks_for_it_decodes_in_fp32_from_the_first_render(tiny, caplog):
    pipeline = copy.copy(tiny.pipeline)
    pipeline.vae = overflowing_fp16_vae(tiny.pipeline)
    pipeline.vae.register_to_config(force_upcast=True)  # what SDXL's own VAE declares
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 100
    with caplog.at_level(logging.WARNING, logger="farm.render.pipeline"):
        (image,) = pipeline.decode_latents(latents)
    assert pipeline.vae.dtype == torch.float32
    assert "overflowed" not in caplog.text  # no wasted half-precision decode
    assert np.asarray(image).std() > 0


def test_latents_that_are_not_finite_fail_the_render_rather_than_come_out_black(tiny):
    latents = torch.full((1, 4, 8, 8), float("nan"))
    with pytest.raises(RuntimeError, match="latents are not finite"):
        tiny.pipeline.decode_latents(latents)
