"""Reference images of outfits and locations, seen through consistent self-attention.

A scene that wears an outfit with reference images (or is set at a location with them) attends,
in the consistency blocks and window, to self-attention tokens of those images, as a story-mode
render attends to its reference scenes' (`farm.render.consistency`). The images' tokens are made
the way a reference scene's are, except that the image is given instead of denoised:

1. each image is fitted to the render's size (scaled to cover it, centre-cropped) and encoded by
   the VAE (the mean of its latent distribution);
2. for every step in the window, it is noised to that step's timestep by the scheduler, with
   noise drawn from a CPU generator seeded by (image, step): the same on every machine;
3. the UNet runs on it with the outfit's (location's) words as the prompt, the unconditional
   half of guidance with none, and each chosen self-attention layer's tokens are kept: the ones
   `sampled_tokens` picks (the image's seed from its content), at half precision.

Rendering them costs one UNet pass per image and step of the window, once: they are stored in
object storage under `reference-images/<digest>/` (one object per step and a manifest, as
reference scenes' tokens), the digest covering the images' content, the words, the consistency
settings, the render's size, steps and guidance and the model, so a worker of any shard of any
story that uses the same outfit reads them instead of computing them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from diffusers.models.attention_processor import Attention
from PIL import Image, ImageOps

from farm.composition import Dressing
from farm.consistency import Consistency
from farm.control_spec import STORED, is_stored
from farm.identity.cache import KeyLock
from farm.render.consistency import (
    ConsistentAttention,
    Recipe,
    SharedTokens,
    check_layers,
    load_tokens,
    sampled_on,
    shared_dtype,
    store_tokens,
    to_host,
)
from farm.storage.base import Storage

if TYPE_CHECKING:
    from farm.render.pipeline import PhotoMakerPipeline, Scene

log = logging.getLogger(__name__)

PREFIX = "reference-images"


def image_ids(dressing: Dressing) -> list[str]:
    """What each image is: its stored content hash (a job's story names it `sha256:<hex>`), so
    that every worker finds the same key whatever its image decoder gives; else (a `SceneRender`
    of a test or bench) a hash of its pixels."""
    return [
        image.removeprefix(STORED)
        if is_stored(image)
        else hashlib.sha256(f"{pixels.size}".encode() + pixels.tobytes()).hexdigest()
        for image, pixels in zip(dressing.images, dressing.pixels, strict=True)
    ]


def image_seed(image_id: str) -> int:
    """An image's seed for token sampling and noise, from what it is."""
    return int(image_id[:8], 16)


def tokens_prefix(
    dressing: Dressing, size: tuple[int, int], steps: int, guided: bool, model: Sequence[str]
) -> str:
    """Where an outfit's (location's) tokens lie for this render setup: a digest of everything
    that decides them, so changed images, words or settings never read stale tokens."""
    document = {
        "dressing": dressing.recipe(),
        "images": image_ids(dressing),
        "size": list(size),
        "steps": steps,
        "guided": guided,
        "model": list(model),
    }
    text = json.dumps(document, sort_keys=True, ensure_ascii=False)
    return f"{PREFIX}/{hashlib.sha256(text.encode()).hexdigest()[:40]}"


def _fitted(image: Image.Image, width: int, height: int) -> torch.Tensor:
    """The image scaled to cover the render's size and centre-cropped, as VAE input in [-1, 1]."""
    fitted = ImageOps.fit(image.convert("RGB"), (width, height), Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(fitted, dtype=np.float32) / 127.5 - 1.0)
    return pixels.permute(2, 0, 1)


def _noise(seed: int, step: int, shape: Sequence[int]) -> torch.Tensor:
    digest = hashlib.sha256(f"{seed}:{step}".encode()).digest()
    generator = torch.Generator("cpu").manual_seed(int.from_bytes(digest[:8], "big"))
    return torch.randn(tuple(shape), generator=generator)


class _Capture:
    """Set on a self-attention layer while an outfit's images run: keeps the sampled tokens of
    each image, then lets the layer's own processor run."""

    def __init__(self, tokens: ImageTokens, name: str, original: Any) -> None:
        self.tokens = tokens
        self.name = name
        self.original = original

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        if encoder_hidden_states is None and attention_mask is None and hidden_states.ndim == 3:
            self.tokens.keep(self.name, hidden_states)
        return self.original(
            attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
        )


class ImageTokens:
    """The tokens of one outfit's (location's) images, made step by step."""

    def __init__(self, dressing: Dressing, guided: bool) -> None:
        self.settings: Consistency = dressing.settings
        self.seeds = [image_seed(image_id) for image_id in image_ids(dressing)]
        recipes: list[Recipe] = [(dressing.prompt, None, seed) for seed in self.seeds]
        self.shared = SharedTokens(recipes, 2 if guided else 1)
        self.step = 0

    def keep(self, name: str, hidden_states: torch.Tensor) -> None:
        branches, images = self.shared.branches, len(self.seeds)
        count = hidden_states.shape[1]
        by_image = hidden_states.view(branches, images, count, -1)
        rate, device = self.settings.sample_rate, hidden_states.device
        picked = [
            by_image[:, b, sampled_on(device, seed, self.step, count, rate)]
            for b, seed in enumerate(self.seeds)
        ]
        half = shared_dtype(hidden_states.dtype)
        self.shared.tokens[(self.step, name)] = to_host(torch.stack(picked, dim=1).to(half))

    @contextmanager
    def capturing(self, pipeline: PhotoMakerPipeline) -> Iterator[None]:
        """The capture on the chosen layers; the UNet's own processors back afterwards."""
        unet = pipeline.unet
        layers = check_layers(unet, self.settings.blocks)
        originals = {name: attn.processor for name, attn in layers.items()}
        compiled = vars(unet).pop("forward", None)  # as ConsistentAttention: eager meanwhile
        try:
            for name, attn in layers.items():
                attn.set_processor(_Capture(self, name, originals[name]))
            yield
        finally:
            for name, attn in layers.items():
                attn.set_processor(originals[name])
            if compiled is not None:
                unet.forward = compiled
            if pipeline.device.type == "cuda":  # the tokens' copies to the host (`to_host`)
                torch.cuda.synchronize(pipeline.device)


@torch.inference_mode()
def render_image_tokens(
    pipeline: PhotoMakerPipeline,
    dressing: Dressing,
    *,
    height: int,
    width: int,
    steps: int,
    guided: bool,
) -> SharedTokens:
    """The tokens every render wearing `dressing` attends to, at each step of the window."""
    if not dressing.pixels:
        raise RuntimeError(f"the reference images of {dressing.prompt!r} were not read")
    device, dtype = pipeline.device, pipeline.dtype
    # 1. Latents of the images, fitted to the render's size.
    vae = pipeline.vae
    if vae.dtype == torch.float16 and vae.config.force_upcast:
        vae.to(torch.float32)  # SDXL's VAE overflows in fp16, encoding as decoding
    pixels = torch.stack([_fitted(image, width, height) for image in dressing.pixels])
    encoded = vae.encode(pixels.to(device, vae.dtype)).latent_dist.mode()
    latents = (encoded * vae.config.scaling_factor).to(dtype)
    images = latents.shape[0]
    # 2. The words, and nothing for the unconditional half.
    cond, pooled = pipeline._encode_text(dressing.prompt)
    hidden, pooled = cond[None].expand(images, -1, -1), pooled[None].expand(images, -1)
    if guided:
        negative, negative_pooled = pipeline._negative(None)
        hidden = torch.cat([negative[None].expand(images, -1, -1), hidden])
        pooled = torch.cat([negative_pooled[None].expand(images, -1), pooled])
    branches = 2 if guided else 1
    time_ids = torch.tensor(
        [[height, width, 0, 0, height, width]], device=device, dtype=dtype
    ).repeat(branches * images, 1)
    added = {"text_embeds": pooled.to(dtype), "time_ids": time_ids}
    # 3. Each step of the window: the images noised to its timestep, through the UNet.
    run = ImageTokens(dressing, guided)
    scheduler_type, config = type(pipeline.scheduler), pipeline.scheduler.config
    timesteps = scheduler_type.from_config(config)
    timesteps.set_timesteps(steps, device=device)
    with run.capturing(pipeline):
        for step, t in enumerate(timesteps.timesteps):
            if not dressing.settings.applies(step, steps):
                continue
            run.step = step
            # A fresh scheduler per step: its noise and input scaling look the timestep up.
            scheduler = scheduler_type.from_config(config)
            scheduler.set_timesteps(steps, device=device)
            noise = torch.stack([_noise(seed, step, latents.shape[1:]) for seed in run.seeds])
            noisy = scheduler.add_noise(latents, noise.to(device, dtype), t.repeat(images))
            model_in = scheduler.scale_model_input(torch.cat([noisy] * branches), t)
            pipeline.unet(
                model_in,
                t,
                encoder_hidden_states=hidden.to(dtype),
                added_cond_kwargs=added,
                return_dict=False,
            )
    return run.shared


MEMORY_BYTES = 8 * 2**30  # on SDXL an image's tokens take about 5 GiB (README, "Outfits")


class ReferenceImageTokens:
    """A pipeline's way to reference-image tokens: its memory (the most recent, up to
    `memory_bytes`, and always the last one), then object storage (`storage`, a worker's), then
    rendering them once across the farm (under `lock`)."""

    def __init__(
        self,
        model: str,
        storage: Storage | None = None,
        lock: KeyLock | None = None,
        memory_bytes: int = MEMORY_BYTES,
    ) -> None:
        self.model = model
        self.storage = storage
        self.lock: KeyLock = lock or self._one_at_a_time
        self.memory_bytes = memory_bytes
        self.computed = 0  # outfits' (locations') tokens this process rendered
        self.loaded = 0  # read from storage
        self._memory: OrderedDict[str, SharedTokens] = OrderedDict()
        self._guard = threading.Lock()
        self._busy = threading.Lock()

    @contextmanager
    def _one_at_a_time(self, key: str) -> Iterator[None]:
        with self._busy:
            yield

    def _held(self) -> int:
        return sum(tokens.nbytes for tokens in self._memory.values())

    def tokens(
        self,
        pipeline: PhotoMakerPipeline,
        dressing: Dressing,
        *,
        height: int,
        width: int,
        steps: int,
        guided: bool,
    ) -> SharedTokens:
        model = (self.model, str(pipeline.dtype), type(pipeline.scheduler).__name__)
        prefix = tokens_prefix(dressing, (width, height), steps, guided, model)
        with self._guard:
            found = self._memory.get(prefix)
        if found is not None:
            return found
        with self.lock(prefix):
            found = None if self.storage is None else load_tokens(self.storage, prefix)
            if found is not None:
                self.loaded += 1
            else:
                found = render_image_tokens(
                    pipeline, dressing, height=height, width=width, steps=steps, guided=guided
                )
                self.computed += 1
                found.key = prefix
                if self.storage is not None:
                    store_tokens(self.storage, prefix, found)
                log.info("reference images of %r: %d bytes", dressing.prompt, found.nbytes)
        with self._guard:
            self._memory[prefix] = found
            while len(self._memory) > 1 and self._held() > self.memory_bytes:
                self._memory.popitem(last=False)
        return found

    def for_renders(
        self,
        pipeline: PhotoMakerPipeline,
        renders: Sequence[Scene],
        *,
        height: int,
        width: int,
        steps: int,
        guided: bool,
    ) -> list[SharedTokens]:
        """The tokens of every outfit and location `renders` use, read or made now, once each:
        a worker records them for its job (`job_consistency_tokens`, what keeps them from
        `farm gc`) before its first batch."""
        found: dict[str, SharedTokens] = {}
        for render in renders:
            for part in render.dressing:
                tokens = self.tokens(
                    pipeline, part, height=height, width=width, steps=steps, guided=guided
                )
                found[str(tokens.key)] = tokens
        return list(found.values())

    def attention(
        self,
        pipeline: PhotoMakerPipeline,
        consistency: ConsistentAttention | None,
        renders: Sequence[Scene],
        *,
        height: int,
        width: int,
        steps: int,
        guided: bool,
    ) -> tuple[ConsistentAttention, list[list[SharedTokens]]]:
        """The attention a call with reference images runs (the story's consistency if it has
        one, else one that only adds the images' tokens) and, per render, the tokens it sees."""
        dressing = [
            [
                self.tokens(pipeline, part, height=height, width=width, steps=steps, guided=guided)
                for part in render.dressing
            ]
            for render in renders
        ]
        if consistency is None:
            settings = next(part.settings for r in renders for part in r.dressing)
            consistency = ConsistentAttention(settings, share=False)
        return consistency, dressing
