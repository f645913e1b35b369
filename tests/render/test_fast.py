"""Fast mode: a preset's few-step LoRA fused on top of PhotoMaker's, rendered with the scheduler,
steps and guidance it was distilled for. `tiny-fast` carries a LoRA that the tiny build writes in
kohya's layout (the one LCM-LoRA, Hyper-SD and SDXL-Lightning ship in) and loads through the
same loader as the real presets."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, LCMScheduler, TCDScheduler
from safetensors.torch import load_file

from farm.recipe import RenderSettings
from farm.render.loading import LoadedPreset, load_preset
from farm.render.pipeline import SceneRender
from farm.render.presets import PRESETS, TINY_FAST_LORA, FastLora, SchedulerKind, get_preset
from farm.render.schedulers import scheduler_for
from farm.render.story_render import render_story
from farm.render.tiny import ensure_tiny, sdxl_scheduler
from farm.story import load_story
from tests.fixtures.tiny import EXAMPLES, photos_of

SIZE = dict(height=64, width=64)


@pytest.fixture(scope="module")
def tiny_fast(models_dir: Path) -> LoadedPreset:
    return load_preset(get_preset("tiny-fast"), models_dir, device="cpu")


@pytest.fixture(scope="module")
def identities(tiny_fast):
    return {"img": tiny_fast.identity.tokens_for(photos_of("newton_man", 2))}


def fast(kind: SchedulerKind) -> FastLora:
    return FastLora("", TINY_FAST_LORA, kind, steps=3, guidance=1.0)


def test_the_fast_lora_is_fused_on_top_of_photomakers(tiny, tiny_fast, models_dir):
    """Against the plain tiny preset (same base, same PhotoMaker LoRA): exactly the fast
    LoRA's delta, weight x alpha / rank x up @ down, read back from its file."""
    lora = load_file(ensure_tiny(models_dir) / TINY_FAST_LORA)
    prefix = "lora_unet_conv_in"
    down = lora[f"{prefix}.lora_down.weight"].float()
    up = lora[f"{prefix}.lora_up.weight"].float()
    alpha, rank = float(lora[f"{prefix}.alpha"]), down.shape[0]
    delta = get_preset("tiny-fast").fast.weight * alpha / rank * up.flatten(1) @ down.flatten(1)
    fused = tiny_fast.pipeline.unet.conv_in.weight - tiny.pipeline.unet.conv_in.weight
    torch.testing.assert_close(fused, delta.reshape(fused.shape), atol=1e-6, rtol=0)


def test_the_fast_preset_renders_with_its_scheduler_steps_and_guidance(
    tiny_fast, models_dir, tmp_path
):
    story = load_story(EXAMPLES / "story.yaml", presets=PRESETS)
    story = story.model_copy(update={"scenes": story.scenes[:1], "preset": "tiny-fast"})
    assert (story.steps, story.guidance) != (2, 1.0)  # the story's own would be different
    assert isinstance(tiny_fast.pipeline.scheduler, LCMScheduler)
    batches: list[int] = []
    hook = tiny_fast.pipeline.unet.register_forward_pre_hook(
        lambda _, args: batches.append(args[0].shape[0])
    )
    try:
        manifest = json.loads(render_story(story, tmp_path / "out", tiny_fast).read_text())
    finally:
        hook.remove()
    assert manifest["settings"]["steps"] == 2 and manifest["settings"]["guidance"] == 1.0
    # Two steps, and guidance 1 runs no unconditional half: one UNet row per render.
    renders = len(manifest["renders"])
    assert batches == [renders, renders]


def test_presets_without_a_fast_lora_keep_the_storys_sampling():
    assert get_preset("photomaker-v2").sampling(30, 7.5) == (30, 7.5)
    assert get_preset("photomaker-v2-lightning").sampling(30, 7.5) == (4, 0.0)
    story = load_story(EXAMPLES / "story.yaml", presets=PRESETS)
    settings = RenderSettings.of(story)
    assert (settings.steps, settings.guidance) == (story.steps, story.guidance)


@pytest.mark.parametrize(
    ("kind", "cls"),
    [
        (SchedulerKind.LCM, LCMScheduler),
        (SchedulerKind.TCD, TCDScheduler),
        (SchedulerKind.EULER_TRAILING, EulerDiscreteScheduler),
    ],
)
def test_each_scheduler_kind_is_built_from_the_base_schedule(kind, cls):
    base = sdxl_scheduler().config
    scheduler = scheduler_for(base, fast(kind))
    assert type(scheduler) is cls
    assert scheduler.config.beta_end == base.beta_end  # the base model's noise schedule
    if kind is SchedulerKind.EULER_TRAILING:
        scheduler.set_timesteps(4)
        assert scheduler.timesteps[0] == 999  # few-step distillations start at the last step
    assert type(scheduler_for(base, None)) is EulerDiscreteScheduler


@pytest.mark.parametrize("kind", list(SchedulerKind))
def test_stochastic_steps_draw_each_renders_noise_from_its_own_seed(tiny_fast, identities, kind):
    """LCM and TCD add fresh noise at every step: from each render's own generator, so a
    render's pixels still do not depend on what it was batched with."""
    pipeline = copy.copy(tiny_fast.pipeline)
    pipeline.scheduler = scheduler_for(sdxl_scheduler().config, fast(kind))
    scenes = [SceneRender("a man img reading", "", seed) for seed in (4, 5, 6)]
    options = dict(steps=3, guidance=1.0, **SIZE)

    def pixels(images):
        return np.stack([np.asarray(image).astype(np.int16) for image in images])

    batched = pixels(pipeline(scenes, identities, **options).images)
    alone = pixels([pipeline([s], identities, **options).images[0] for s in scenes])
    assert np.abs(batched - alone).max() <= 1
    assert not np.array_equal(batched[0], batched[1])
