"""The PhotoMaker SDXL pipeline on the tiny preset: identity fusion, style strength, batching,
determinism and input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor

from farm.errors import InputError
from farm.identity.tokens import IdentityTokens
from farm.render.pipeline import RenderCancelled, SceneRender, start_merge_step
from farm.settings import Settings
from tests.fixtures.tiny import photos_of

SIZE = dict(height=64, width=64)


@pytest.fixture(scope="module")
def newton(tiny) -> IdentityTokens:
    return tiny.identity.tokens_for(photos_of("newton_man", 2))


@pytest.fixture(scope="module")
def scarlett(tiny) -> IdentityTokens:
    return tiny.identity.tokens_for(photos_of("scarletthead_woman", 2))


def pixels(image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def render(tiny, identity, prompts_and_seeds, **kwargs):
    renders = [SceneRender(p, "lowres", s) for p, s in prompts_and_seeds]
    options = dict(steps=3, guidance=5.0, style_strength=20, **SIZE) | kwargs
    return tiny.pipeline(renders, {"img": identity}, **options).images


def test_fused_positions_carry_the_identity_and_nothing_else_changes(tiny, newton):
    pipeline = tiny.pipeline
    embeds, pooled = pipeline.encode_identity_prompt(
        "a photo of a man img reading", {"img": newton}
    )
    # The same expanded, trigger-free ids without fusion: "man" four times.
    plain, plain_pooled = pipeline._encode_text("a photo of a man man man man reading")
    positions = [5, 6, 7, 8]  # bos a photo of a | man x (2 photos x 2 tokens)
    fused = pipeline.id_encoder.fuse(plain[positions], newton.flat())
    torch.testing.assert_close(embeds[positions], fused)
    others = [i for i in range(77) if i not in positions]
    torch.testing.assert_close(embeds[others], plain[others])
    # The pooled embedding is that of the expanded prompt: identity does not touch it.
    torch.testing.assert_close(pooled, plain_pooled)


@pytest.mark.parametrize(("ratio", "steps"), [(0, 6), (20, 10), (50, 6), (100, 4)])
def test_unet_sees_text_only_prompt_until_start_merge_step(tiny, newton, ratio, steps):
    prompt = "a man img reading in the library"
    id_embeds, _ = tiny.pipeline.encode_identity_prompt(prompt, {"img": newton})
    text_embeds, _ = tiny.pipeline._encode_text("a man reading in the library")
    seen: list[str] = []

    def which_prompt(module, args, kwargs):
        cond = kwargs["encoder_hidden_states"][1]  # [negative, prompt] under guidance
        if torch.allclose(cond, id_embeds, atol=1e-5):
            seen.append("id")
        elif torch.allclose(cond, text_embeds, atol=1e-5):
            seen.append("text")
        else:
            seen.append("other")

    hook = tiny.pipeline.unet.register_forward_pre_hook(which_prompt, with_kwargs=True)
    callback_saw: list[bool] = []
    try:
        render(
            tiny,
            newton,
            [(prompt, 1)],
            steps=steps,
            style_strength=ratio,
            callback=lambda state: callback_saw.append(state.uses_identity),
        )
    finally:
        hook.remove()
    merge = start_merge_step(ratio, steps)
    expected = ["text" if i <= merge else "id" for i in range(steps)]
    assert seen == expected
    assert callback_saw == [s == "id" for s in expected]


def test_start_merge_step_follows_the_reference_formula_and_cap():
    assert start_merge_step(20, 50) == 10
    assert start_merge_step(15, 30) == 4
    assert start_merge_step(50, 100) == 30  # capped
    assert start_merge_step(0, 50) == 0


def test_same_seed_same_pixels_other_seed_other_pixels(tiny, newton):
    prompt = "a man img walking in the garden"
    first, second, other = (render(tiny, newton, [(prompt, seed)])[0] for seed in (7, 7, 8))
    assert np.array_equal(pixels(first), pixels(second))
    assert not np.array_equal(pixels(first), pixels(other))


def test_a_render_does_not_depend_on_what_it_is_batched_with(tiny, newton):
    scenes = [("a man img reading", 1), ("a man img in the garden at night", 2), ("a man img", 3)]
    batched = render(tiny, newton, scenes)
    alone = [render(tiny, newton, [scene])[0] for scene in scenes]
    for together, single in zip(batched, alone, strict=True):
        assert np.abs(pixels(together) - pixels(single)).max() <= 1


def test_each_distinct_prompt_and_negative_is_encoded_once_per_batch(tiny, newton):
    calls = []
    hooks = [
        encoder.register_forward_pre_hook(lambda *_, name=name: calls.append(name))
        for name, encoder in (
            ("first", tiny.pipeline.text_encoder),
            ("second", tiny.pipeline.text_encoder_2),
        )
    ]
    scenes = [("a man img reading", 1), ("a man img reading", 2), ("a man img at night", 3)]
    try:
        render(tiny, newton, scenes, steps=1)
    finally:
        for hook in hooks:
            hook.remove()
    # Per distinct prompt: its ID prompt and its text-only prompt; once: the shared negative.
    assert calls.count("first") == calls.count("second") == 2 * 2 + 1


def test_identity_changes_the_picture(tiny, newton, scarlett):
    scene = [("a person img at the window", 5)]
    assert not np.array_equal(
        pixels(render(tiny, newton, scene)[0]), pixels(render(tiny, scarlett, scene)[0])
    )


def test_no_negative_is_zeros_and_an_empty_one_is_encoded_as_in_sdxl(tiny):
    embeds, pooled = tiny.pipeline._negative(None)
    assert not embeds.any() and not pooled.any()
    empty, empty_pooled = tiny.pipeline._negative("")
    assert torch.equal(empty, tiny.pipeline._encode_text("")[0])
    assert empty.any() and empty_pooled.any()
    embeds, _ = tiny.pipeline._negative("lowres")
    assert embeds.any() and not torch.equal(embeds, empty)


def test_a_trigger_in_the_negative_is_refused_before_any_model_work(tiny, newton):
    scene = [SceneRender("a man img reading", "blurry img", 1)]
    with pytest.raises(InputError, match="negative prompt 'blurry img' contains the trigger"):
        tiny.pipeline(scene, {"img": newton}, height=64, width=64, steps=1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(height=63), "height must be a positive multiple"),
        (dict(steps=0), "steps must be at least 1"),
        (dict(guidance=-1.0), "guidance must be >= 0"),
        (dict(style_strength=120), "style_strength is a percentage"),
    ],
)
def test_bad_settings_fail_before_any_model_work(tiny, newton, kwargs, message):
    calls = []
    hook = tiny.pipeline.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(InputError, match=message):
            render(tiny, newton, [("a man img", 1)], **kwargs)
    finally:
        hook.remove()
    assert calls == []


def test_identity_of_another_width_is_refused(tiny, newton):
    alien = IdentityTokens(torch.zeros(1, 2, 128), "other", "x")
    with pytest.raises(InputError, match="made by another model"):
        render(tiny, alien, [("a man img", 1)])


def test_cancellation_stops_between_steps(tiny, newton):
    asked = []

    def cancelled() -> bool:
        asked.append(1)
        return len(asked) > 2

    with pytest.raises(RenderCancelled, match="step 2"):
        render(tiny, newton, [("a man img", 1)], cancelled=cancelled)


def test_v1_preset_renders_with_one_token_per_photo(tiny_v1):
    identity = tiny_v1.identity.tokens_for(photos_of("newton_man", 3))
    assert identity.tokens.shape[:2] == (3, 1)
    images = render(tiny_v1, identity, [("a man img reading", 1)])
    assert images[0].size == (64, 64)


def test_device_noise_is_drawn_as_the_reference_demo_draws_it(tiny):
    """`noise="device"`: each render's generator lives on the pipeline's device and draws in
    its dtype, as diffusers' `randn_tensor` with the demo's `torch.Generator(device)`."""
    pipeline = tiny.pipeline
    pipeline.noise = "device"
    try:
        latents, generators = pipeline.prepare_latents([5, 6], 64, 64)
    finally:
        pipeline.noise = "cpu"
    shape = (1, pipeline.unet.config.in_channels, 32, 32)
    generator = torch.Generator(pipeline.device).manual_seed(6)
    expected = randn_tensor(
        shape, generator=generator, device=pipeline.device, dtype=pipeline.dtype
    )
    assert torch.equal(latents[1], expected[0])
    assert generators[1].device == pipeline.device


@pytest.mark.parametrize(
    ("name", "value", "field", "expected"),
    [
        ("FARM_PROMPT_TRUNCATION", "Keep-End", "prompt_truncation", "keep-end"),
        ("FARM_NOISE", "device", "noise", "device"),
    ],
)
def test_fidelity_settings_are_read_and_checked(name, value, field, expected):
    assert getattr(Settings.from_env({}), field) == ("reference" if field != "noise" else "cpu")
    assert getattr(Settings.from_env({name: value}), field) == expected
    with pytest.raises(InputError, match=f"{name} must be one of"):
        Settings.from_env({name: "sometimes"})
