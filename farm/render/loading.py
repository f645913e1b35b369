"""Loading a preset into memory once: the SDXL components, the PhotoMaker encoder and LoRA, the
face model and the identity engine. A worker keeps the result warm for its whole life."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from farm.identity.cache import IdentityCache
from farm.identity.checkpoint import encoder_from_checkpoint, read_checkpoint
from farm.identity.engine import IdentityEngine
from farm.identity.faces import open_face_analyzer
from farm.identity.tokens import IdentityTokens
from farm.render.lora import fuse_unet_lora
from farm.render.pipeline import PhotoMakerPipeline, SceneRender
from farm.render.presets import ModelFiles, Preset, locate

log = logging.getLogger(__name__)


@dataclass
class LoadedPreset:
    preset: Preset
    pipeline: PhotoMakerPipeline
    identity: IdentityEngine
    device: torch.device
    load_seconds: float


def pick_device(requested: str | None = None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the card supports it, else fp16, as the reference does; fp32 on a CPU."""
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load_sdxl(folder: Path, device: torch.device, dtype: torch.dtype) -> dict[str, object]:
    """SDXL's components from a diffusers folder, without touching the network."""

    def sub(name: str) -> Path:
        return folder / name

    scheduler = EulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler")
    return dict(
        tokenizer=CLIPTokenizer.from_pretrained(sub("tokenizer")),
        tokenizer_2=CLIPTokenizer.from_pretrained(sub("tokenizer_2")),
        text_encoder=CLIPTextModel.from_pretrained(sub("text_encoder"), dtype=dtype).to(device),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(
            sub("text_encoder_2"), dtype=dtype
        ).to(device),
        unet=UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype).to(
            device
        ),
        vae=AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype).to(device),
        # The reference renders with Euler whatever scheduler the base model ships with.
        scheduler=EulerDiscreteScheduler.from_config(scheduler.config),
    )


def load_preset(
    preset: Preset,
    models_dir: Path,
    *,
    cache: IdentityCache | None = None,
    device: str | None = None,
    sdxl_base: str | None = None,
    files: ModelFiles | None = None,
) -> LoadedPreset:
    started = time.perf_counter()
    files = files or locate(preset, models_dir, sdxl_base)
    torch_device = pick_device(device)
    dtype = pick_dtype(torch_device)
    parts = load_sdxl(files.sdxl_dir, torch_device, dtype)
    for model in ("text_encoder", "text_encoder_2", "unet", "vae"):
        parts[model].eval().requires_grad_(False)

    checkpoint = read_checkpoint(files.checkpoint)
    encoder = encoder_from_checkpoint(checkpoint, preset.version, dtype=dtype, device=torch_device)
    fuse_unet_lora(parts["unet"], checkpoint.lora_weights)
    faces = open_face_analyzer(preset.face_model, files.models_dir)
    pipeline = PhotoMakerPipeline(**parts, id_encoder=encoder)
    identity = IdentityEngine(encoder, faces, cache or IdentityCache())
    seconds = time.perf_counter() - started
    log.info("loaded preset %s on %s (%s) in %.1f s", preset.name, torch_device, dtype, seconds)
    return LoadedPreset(preset, pipeline, identity, torch_device, seconds)


def warm_up(loaded: LoadedPreset) -> float:
    """Render one throw-away batch so that the first real shard does not pay for kernel
    selection, allocator growth and lazy initialisation (seconds on a GPU, ~10x a render on a
    CPU). Returns the seconds it took."""
    started = time.perf_counter()
    encoder = loaded.pipeline.id_encoder
    tokens = torch.zeros(1, encoder.tokens_per_image, encoder.config.embed_dim)
    identity = IdentityTokens(tokens, encoder.fingerprint, "warm-up")
    width, height = loaded.preset.size
    renders = [
        SceneRender("a photo of a person img", "", seed) for seed in range(loaded.preset.batch_size)
    ]
    loaded.pipeline(renders, {"img": identity}, height=height, width=width, steps=1)
    return time.perf_counter() - started
