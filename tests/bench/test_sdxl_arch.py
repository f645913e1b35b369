"""The benchmark's SDXL is the published one: parameter counts of the code-built configs."""

from __future__ import annotations

import torch

from bench.sdxl_arch import SDXL_BASE, SMALL, build_stack, parameter_counts

# The published checkpoints of stabilityai/stable-diffusion-xl-base-1.0, counted from their
# safetensors: unet 2,567,463,684; vae 83,653,863; text_encoder (CLIP ViT-L/14 text tower,
# CLIPTextModel: 123,650,304 with the 768x768 projection, which SDXL's first encoder does not
# have) 123,060,480; text_encoder_2 (OpenCLIP ViT-bigG/14, CLIPTextModelWithProjection)
# 694,659,840.
PUBLISHED = {
    "unet": 2_567_463_684,
    "vae": 83_653_863,
    "text_encoder": 123_060_480,
    "text_encoder_2": 694_659_840,
}


def test_code_built_sdxl_has_the_published_parameter_counts():
    counts = parameter_counts(SDXL_BASE)
    assert {name: counts[name] for name in PUBLISHED} == PUBLISHED


def test_photomaker_v2_encoder_fuses_at_sdxl_text_width():
    # The fused ID tokens replace rows of the concatenated text embedding the UNet attends to.
    assert SDXL_BASE.id_encoder.version == 2
    assert SDXL_BASE.id_encoder.embed_dim == SDXL_BASE.unet["cross_attention_dim"] == 2048
    assert SMALL.id_encoder.embed_dim == SMALL.unet["cross_attention_dim"]


def test_stack_is_built_on_the_device_in_the_dtype_and_runs():
    stack = build_stack(SMALL, "cpu", torch.bfloat16)
    for model in (
        stack.unet,
        stack.vae,
        stack.text_encoder,
        stack.text_encoder_2,
        stack.id_encoder,
    ):
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    # Buffers are real, not left empty: CLIP's position ids index its 77 positions.
    (positions,) = [b for n, b in stack.text_encoder.named_buffers() if n.endswith("position_ids")]
    assert positions.tolist() == [list(range(77))]
    ids = stack.tokenizer("a man reading", padding="max_length", max_length=77).input_ids
    with torch.inference_mode():
        out = stack.text_encoder_2(torch.tensor([ids]), output_hidden_states=True)
    assert out.text_embeds.shape == (1, SMALL.text_encoder_2["projection_dim"])
    assert torch.isfinite(out.text_embeds).all()


def test_same_seed_same_weights():
    first = build_stack(SMALL, "cpu", torch.float32, seed=1).unet.conv_in.weight
    again = build_stack(SMALL, "cpu", torch.float32, seed=1).unet.conv_in.weight
    other = build_stack(SMALL, "cpu", torch.float32, seed=2).unet.conv_in.weight
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
