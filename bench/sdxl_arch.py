"""SDXL base 1.0 and the PhotoMaker V2 encoder, built in code with random weights.

The GPU benchmark needs the compute of the real model without its 7 GB download: the shapes
below are the published configs of `stabilityai/stable-diffusion-xl-base-1.0` (`unet/`, `vae/`,
`text_encoder/` = CLIP ViT-L/14, `text_encoder_2/` = OpenCLIP ViT-bigG/14 with projection) and
PhotoMaker V2's encoder at its published widths (`IDEncoderConfig()`'s defaults). Weights are
random and made where they will run, in the bench's dtype, so a 4-billion-parameter stack is
ready on a GPU in seconds. `SMALL` is the same architecture family at toy widths, for the CPU
smoke run and its test.

Only token ids matter to the text encoders' compute (every prompt is padded to 77 positions),
so the tokenizers are the tiny preset's in-memory CLIP BPE; the encoders keep CLIP's real
49,408-row vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from farm.identity.checkpoint import perceiver_dim_head
from farm.identity.encoders import IDEncoder, IDEncoderConfig, build_id_encoder
from farm.render.tiny import sdxl_scheduler, tiny_tokenizer

CLIP_VOCAB = 49408
TEXT_POSITIONS = 77
TIME_IDS = 6  # SDXL's micro-conditioning: original size, crop offset, target size


@dataclass(frozen=True)
class SdxlArch:
    """The shapes of one SDXL + PhotoMaker stack; every field is a constructor's keywords."""

    name: str
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    text_encoder_2: dict[str, Any]
    id_encoder: IDEncoderConfig = field(default_factory=IDEncoderConfig)


def _text(
    hidden: int, intermediate: int, layers: int, heads: int, act: str, projection: int
) -> dict[str, Any]:
    # bos 0, pad 1, eos 2 as in SDXL's configs: eos 2 selects the legacy pooling at
    # argmax(input_ids), which the in-memory tokenizer satisfies (end-of-text is its largest id).
    return dict(
        vocab_size=CLIP_VOCAB,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=TEXT_POSITIONS,
        hidden_act=act,
        projection_dim=projection,
        layer_norm_eps=1e-5,
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
    )


def _unet(
    channels: tuple[int, int, int],
    depth: tuple[int, int, int],
    heads: tuple[int, int, int],
    time_embed: int,
    text_widths: tuple[int, int],
) -> dict[str, Any]:
    return dict(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=channels,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        transformer_layers_per_block=depth,
        # diffusers' historical name: SDXL's "attention_head_dim" is the number of heads.
        attention_head_dim=heads,
        cross_attention_dim=sum(text_widths),  # both encoders' hidden states, concatenated
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed,
        # The time ids' Fourier features plus the second encoder's pooled projection.
        projection_class_embeddings_input_dim=TIME_IDS * time_embed + text_widths[1],
        norm_num_groups=32,
        norm_eps=1e-5,
        flip_sin_to_cos=True,
        freq_shift=0,
        act_fn="silu",
    )


def _vae(channels: tuple[int, int, int, int]) -> dict[str, Any]:
    return dict(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=2,
        block_out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=32,
        act_fn="silu",
        sample_size=1024,
        scaling_factor=0.13025,
        force_upcast=True,
    )


SDXL_BASE = SdxlArch(
    name="sdxl-base-1.0 + photomaker-v2",
    unet=_unet((320, 640, 1280), (1, 2, 10), (5, 10, 20), 256, (768, 1280)),
    vae=_vae((128, 256, 512, 512)),
    text_encoder=_text(768, 3072, 12, 12, "quick_gelu", 768),  # CLIP ViT-L/14
    text_encoder_2=_text(1280, 5120, 32, 20, "gelu", 1280),  # OpenCLIP ViT-bigG/14
)

# The same families at widths a CPU renders in a fraction of a second.
SMALL = SdxlArch(
    name="small (SDXL family, toy widths) + photomaker-v2",
    unet=_unet((32, 64, 128), (1, 2, 2), (1, 2, 4), 16, (32, 64)),
    vae=_vae((32, 32, 64, 64)),
    text_encoder=_text(32, 64, 2, 2, "quick_gelu", 32),
    text_encoder_2=_text(64, 128, 2, 2, "gelu", 64),
    id_encoder=IDEncoderConfig(
        version=2,
        vision_hidden=64,
        vision_intermediate=128,
        vision_layers=2,
        vision_heads=2,
        projection_dim=32,
        projection_dim_2=64,
        face_embed_dim=64,
        perceiver_depth=1,
        perceiver_dim_head=perceiver_dim_head(96),
    ),
)

ARCHS = {"sdxl": SDXL_BASE, "small": SMALL}


@dataclass
class SdxlStack:
    """Every component both pipelines need, built once and shared."""

    tokenizer: Any
    tokenizer_2: Any
    text_encoder: CLIPTextModel
    text_encoder_2: CLIPTextModelWithProjection
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    scheduler: EulerDiscreteScheduler
    id_encoder: IDEncoder

    def sdxl_components(self) -> dict[str, Any]:
        """The keywords of diffusers' `StableDiffusionXLPipeline` (no ID encoder)."""
        return {
            name: getattr(self, name)
            for name in (
                "tokenizer",
                "tokenizer_2",
                "text_encoder",
                "text_encoder_2",
                "unet",
                "vae",
                "scheduler",
            )
        }


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_models(
    arch: SdxlArch, device: str | torch.device, dtype: torch.dtype = torch.float32
) -> dict[str, torch.nn.Module]:
    """The five networks of `arch`, created directly on `device` in `dtype`.

    Building under the device and default-dtype context runs each layer's own initialisation
    where the weights live: no fp32 copy on the host, no host-to-device transfer, and buffers
    (CLIP's position ids, say) are real. On the meta device nothing is allocated, which is how
    the parameter counts are checked.
    """
    with torch.device(device), _default_dtype(dtype):
        models: dict[str, torch.nn.Module] = {
            "text_encoder": CLIPTextModel(CLIPTextConfig(**arch.text_encoder)),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**arch.text_encoder_2)),
            "unet": UNet2DConditionModel(**arch.unet),
            "vae": AutoencoderKL(**arch.vae),
            "id_encoder": build_id_encoder(arch.id_encoder),
        }
    for model in models.values():
        model.requires_grad_(False).eval()
    return models


def parameter_counts(arch: SdxlArch) -> dict[str, int]:
    """Parameters per network, counted on the meta device (nothing allocated)."""
    models = build_models(arch, "meta")
    return {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}


def build_stack(
    arch: SdxlArch, device: str | torch.device, dtype: torch.dtype, seed: int = 0
) -> SdxlStack:
    """A complete random-weight stack on `device`; the same seed gives the same weights."""
    torch.manual_seed(seed)
    models = build_models(arch, device, dtype)
    return SdxlStack(
        tokenizer=tiny_tokenizer(pad_token="<|endoftext|>"),
        tokenizer_2=tiny_tokenizer(pad_token="!"),  # SDXL's second tokenizer pads with '!'
        scheduler=sdxl_scheduler(),
        **models,
    )
