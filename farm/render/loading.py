"""Loading a preset into memory once: the SDXL components, the PhotoMaker encoder and LoRA (and a
fast preset's few-step LoRA), the face model and the identity engine, accelerated and placed on
the GPU for a VRAM mode. A worker keeps the result warm for its whole life."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from farm.identity.cache import IdentityCache
from farm.identity.checkpoint import encoder_from_checkpoint, read_checkpoint
from farm.identity.engine import IdentityEngine
from farm.identity.faces import open_face_analyzer
from farm.identity.tokens import IdentityTokens
from farm.recipe import RenderSettings
from farm.render.acceleration import accelerate, compile_wanted, is_compiled
from farm.render.control import ControlModels
from farm.render.control_models import locate_control
from farm.render.lora import fuse_unet_lora, read_lora_file
from farm.render.memory import VramMode, apply_vram_mode, choose_vram_mode, release_cached_memory
from farm.render.pipeline import PhotoMakerPipeline, RenderResult, Scene, SceneRender
from farm.render.presets import FastLora, ModelFiles, Preset, locate
from farm.render.reference_images import ReferenceImageTokens
from farm.render.schedulers import scheduler_for

log = logging.getLogger(__name__)


@dataclass
class LoadedPreset:
    preset: Preset
    pipeline: PhotoMakerPipeline
    identity: IdentityEngine
    device: torch.device
    load_seconds: float
    vram_mode: VramMode = VramMode.FULL
    max_batch: int | None = None  # learnt from out-of-memory errors; None: no limit seen yet

    def check(
        self,
        scenes: Sequence[Scene],
        settings: RenderSettings,
        identities: Mapping[str, IdentityTokens],
        class_words: Mapping[str, str] | None = None,
    ) -> None:
        """Raise `InputError` for any of `scenes` that cannot render, before a model runs."""
        self.pipeline.check_inputs(
            scenes, identities, **_sampling(settings), class_words=class_words
        )

    def render(
        self,
        scenes: Sequence[Scene],
        settings: RenderSettings,
        identities: Mapping[str, IdentityTokens],
        class_words: Mapping[str, str] | None = None,
        **hooks: Any,
    ) -> RenderResult:
        """Render `scenes` with `settings`, in one batch if it fits; `hooks` are the pipeline's
        other keyword arguments (its step callback, its cancel check).

        On CUDA out-of-memory the batch is halved, and the smaller size kept for later calls;
        at batch 1 the VRAM mode steps down (full, model-offload, sequential-offload, each
        starting again from whole batches); only batch 1 failing in the lowest mode raises.
        Every render draws from its own generator, so none of this changes a pixel.
        """
        kwargs = {"identities": identities, "class_words": class_words, **_sampling(settings)}
        kwargs.update(hooks)
        images = []
        timings: dict[str, float] = {}
        todo = list(scenes)
        while todo:
            size = min(len(todo), self.max_batch or len(todo))
            batch = todo[:size]
            if size == 1 and self.vram_mode.lower() is None:
                result = self.pipeline(batch, **kwargs)  # nothing left to try: an OOM is final
            else:
                result = self._attempt(batch, kwargs)
                if result is None:
                    self._step_down(size)
                    continue
            images += result.images
            for name, seconds in result.timings.items():
                timings[name] = timings.get(name, 0.0) + seconds
            todo = todo[size:]
        return RenderResult(images, timings)

    def _attempt(self, batch: list[Scene], kwargs: dict[str, Any]) -> RenderResult | None:
        """The batch's result, or None if the GPU ran out of memory. Returning (not raising)
        drops the error's traceback, and with it the tensors its frames still hold."""
        try:
            return self.pipeline(batch, **kwargs)
        except torch.OutOfMemoryError as error:
            reason = str(error).splitlines()[0] if str(error) else "out of memory"
            log.warning("out of GPU memory, %d in %s: %s", len(batch), self.vram_mode, reason)
            return None

    def _step_down(self, size: int) -> None:
        release_cached_memory()
        if size > 1:
            self.max_batch = size // 2
            log.warning("preset %s renders batches of %d from now on", self.preset.name, size // 2)
            return
        lower = self.vram_mode.lower()
        assert lower is not None, "render() never retries batch 1 in the lowest mode"
        apply_vram_mode(self.pipeline, lower)
        self.vram_mode = lower
        self.max_batch = None  # the lower mode frees memory: whole batches may fit again
        log.warning("preset %s steps down to VRAM mode %s", self.preset.name, lower)


def pick_device(requested: str | None = None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the card supports it, else fp16, as the reference does; fp32 on a CPU."""
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def vae_dtype(dtype: torch.dtype, force_upcast: bool) -> torch.dtype:
    """SDXL's VAE overflows in fp16 (its config says `force_upcast`): it is kept in fp32, 84 M
    parameters. bf16 has fp32's range and needs no upcast; neither does an fp16-fix VAE."""
    return torch.float32 if dtype == torch.float16 and force_upcast else dtype


def pick_vram_mode(setting: str, device: torch.device, preset: Preset) -> VramMode:
    """`FARM_VRAM_MODE`: a mode by name, or "auto": from the card's free memory for the
    preset's default size and batch (always `full` on a CPU)."""
    if setting != "auto":
        return VramMode(setting)
    if device.type != "cuda":
        return VramMode.FULL
    free, total = torch.cuda.mem_get_info(device)
    width, height = preset.size
    return choose_vram_mode(free, total, height=height, width=width, batch=preset.batch_size)


def load_sdxl(
    folder: Path, device: torch.device, dtype: torch.dtype, fast: FastLora | None = None
) -> dict[str, object]:
    """SDXL's components from a diffusers folder, without touching the network."""

    def sub(name: str) -> Path:
        return folder / name

    def text_encoder(
        cls: type[CLIPTextModel | CLIPTextModelWithProjection], name: str
    ) -> CLIPTextModel | CLIPTextModelWithProjection:
        model = cls.from_pretrained(sub(name), dtype=dtype, attn_implementation="sdpa")
        return model.to(device)

    scheduler = EulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler")
    vae_config = AutoencoderKL.load_config(folder, subfolder="vae")
    vae = AutoencoderKL.from_pretrained(
        folder,
        subfolder="vae",
        torch_dtype=vae_dtype(dtype, vae_config.get("force_upcast", True)),
    )
    return dict(
        tokenizer=CLIPTokenizer.from_pretrained(sub("tokenizer")),
        tokenizer_2=CLIPTokenizer.from_pretrained(sub("tokenizer_2")),
        text_encoder=text_encoder(CLIPTextModel, "text_encoder"),
        text_encoder_2=text_encoder(CLIPTextModelWithProjection, "text_encoder_2"),
        unet=UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype).to(
            device
        ),
        vae=vae.to(device),
        scheduler=scheduler_for(scheduler.config, fast),
    )


def load_preset(
    preset: Preset,
    models_dir: Path,
    *,
    cache: IdentityCache | None = None,
    device: str | None = None,
    sdxl_base: str | None = None,
    files: ModelFiles | None = None,
    vram_mode: str = "auto",
    compile_unet: str = "off",
    prompt_truncation: str = "reference",
    noise: str = "cpu",
) -> LoadedPreset:
    """`vram_mode`, `compile_unet`, `prompt_truncation` and `noise` take the values of
    `FARM_VRAM_MODE`, `FARM_COMPILE`, `FARM_PROMPT_TRUNCATION` and `FARM_NOISE`."""
    started = time.perf_counter()
    files = files or locate(preset, models_dir, sdxl_base)
    torch_device = pick_device(device)
    dtype = pick_dtype(torch_device)
    mode = pick_vram_mode(vram_mode, torch_device, preset)
    # In the offload modes the card may not hold every model at once: they load on the CPU.
    home = torch_device if mode is VramMode.FULL else torch.device("cpu")
    parts = load_sdxl(files.sdxl_dir, home, dtype, preset.fast)
    for model in ("text_encoder", "text_encoder_2", "unet", "vae"):
        parts[model].eval().requires_grad_(False)

    checkpoint = read_checkpoint(files.checkpoint)
    encoder = encoder_from_checkpoint(checkpoint, preset.version, dtype=dtype, device=torch_device)
    # LoRAs first: fusing the QKV projections (in accelerate) concatenates the fused weights.
    fuse_unet_lora(parts["unet"], checkpoint.lora_weights)
    if preset.fast is not None:
        if files.fast_lora is None:
            raise ValueError(f"preset {preset.name!r} has a fast LoRA but no file was located")
        fast_lora = read_lora_file(files.fast_lora)
        fuse_unet_lora(parts["unet"], fast_lora, scale=preset.fast.weight)
    faces = open_face_analyzer(preset.face_model, files.models_dir)
    pipeline = PhotoMakerPipeline(
        **parts,
        id_encoder=encoder,
        device=torch_device,
        prompt_truncation=prompt_truncation,
        noise=noise,
    )
    # Loaded when a scene first asks for a control type, on the device in the UNet's dtype.
    where = functools.partial(locate_control, files.models_dir, tiny=preset.tiny)
    pipeline.controls = ControlModels(where, torch_device, dtype)
    # In this process's memory; a worker gives it object storage (workers/runtime.py).
    pipeline.reference_images = ReferenceImageTokens(preset.name)
    accelerate(pipeline, compile_unet=compile_wanted(compile_unet, torch_device))
    apply_vram_mode(pipeline, mode)
    identity = IdentityEngine(encoder, faces, cache or IdentityCache())
    seconds = time.perf_counter() - started
    log.info(
        "loaded preset %s on %s (%s, VRAM mode %s) in %.1f s",
        preset.name,
        torch_device,
        dtype,
        mode,
        seconds,
    )
    return LoadedPreset(preset, pipeline, identity, torch_device, seconds, mode)


def warm_up(loaded: LoadedPreset) -> float:
    """Render one throw-away batch so that the first real shard does not pay for kernel
    selection, allocator growth and lazy initialisation (seconds on a GPU, ~10x a render on a
    CPU), and meets an out-of-memory here rather than mid-shard. A compiled UNet compiles here,
    once per batch shape: the preset's batch and a single render (a shard's short last batch,
    identity-QC re-renders). Returns the seconds it took."""
    started = time.perf_counter()
    encoder = loaded.pipeline.id_encoder
    tokens = torch.zeros(1, encoder.tokens_per_image, encoder.config.embed_dim)
    identity = IdentityTokens(tokens, encoder.fingerprint, "warm-up")
    preset = loaded.preset
    width, height = preset.size
    _, guidance = preset.sampling(1, preset.guidance)
    settings = RenderSettings(preset.name, width, height, 1, guidance, "", 20.0)
    sizes = {preset.batch_size, 1} if is_compiled(loaded.pipeline.unet) else {preset.batch_size}
    for size in sorted(sizes, reverse=True):
        renders = [SceneRender("a photo of a person img", "", seed) for seed in range(size)]
        loaded.render(renders, settings, {"img": identity})
    return time.perf_counter() - started


def _sampling(settings: RenderSettings) -> dict[str, Any]:
    """The pipeline's keyword arguments for `settings`: the one place they are spelt out."""
    return {
        "height": settings.height,
        "width": settings.width,
        "steps": settings.steps,
        "guidance": settings.guidance,
        "style_strength": settings.style_strength,
    }
