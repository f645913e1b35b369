"""The PhotoMaker SDXL pipeline: a batch of scenes of one story, rendered with the stacked ID
embedding. `__call__` reads top to bottom in numbered steps, like diffusers' pipelines.

What differs from diffusers' SDXL pipeline, and why:
- identity: ID tokens arrive precomputed (`IdentityTokens`, cached per character); only the
  fuse step runs here, once per distinct prompt;
- batching: every render brings its own prompt and seed, and its latents come from its own
  generator (on the CPU unless `noise="device"`), so a render's pixels do not depend on what it
  was batched with, nor (with CPU noise) on the device;
- style strength: the UNet sees the text-only prompt up to `start_merge_step`, then the ID prompt;
- placement: models may live off the GPU between uses (`farm.render.memory`), so the device the
  pipeline computes on is its own attribute, not read off a model's weights.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image
from transformers import CLIPTextModel, CLIPTextModelWithProjection, PreTrainedTokenizerBase

from farm.composition import Dressing
from farm.control_spec import SceneControl
from farm.errors import InputError
from farm.identity.encoders import IDEncoder
from farm.identity.prompt import (
    expand_prompt,
    present_triggers,
    register_triggers,
    text_only_prompt,
)
from farm.identity.tokens import IdentityTokens
from farm.render.checkpoint import (
    Checkpoint,
    CheckpointError,
    RenderInterrupted,
    generator_states,
    restore_generators,
    restore_scheduler,
    scheduler_state,
)
from farm.render.control import BatchControl, ControlModels, check_controls
from farm.settings import NOISE_DEVICES

if TYPE_CHECKING:
    from farm.render.consistency import ConsistentAttention, SharedTokens

log = logging.getLogger(__name__)

MAX_MERGE_STEP = 30  # the reference caps the text-only phase at 30 steps


class Offload(Protocol):
    """Where a VRAM mode keeps the weights that wait off the device (`farm.render.memory`'s
    `ModelOffload` and `LayerOffload`). Named here by what the pipeline needs of it, so that
    the pipeline imports nothing of the modules that place and speed it up."""

    def remove(self) -> None:
        """Every weight back in its model, and no hook left: the mode is undone."""


class ReferenceImages(Protocol):
    """Where the tokens of outfits' and locations' reference images come from
    (`farm.render.reference_images.ReferenceImageTokens`, set by the loader; a worker's reads
    and stores them in object storage). Named here by what the pipeline needs of it, so that
    the pipeline imports nothing of the module that makes them."""

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
        """The attention to run and, per render, the reference-image tokens it attends to."""
        ...

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
        """The tokens of every outfit and location `renders` use, read or made now."""
        ...


class RenderCancelled(Exception):
    """The caller asked to stop (a cancelled job); nothing of the batch is returned."""


class Scene(Protocol):
    """One image to make, as the pipeline reads it: its styled prompt (with trigger words),
    negative and seed. The farm passes its planned renders (`farm.story.PlannedRender`) as they
    are, so a render has one shape from the story to the PNG.

    As in diffusers, a negative of None means "no negative": zeros where the model's config
    says `force_zeros_for_empty_prompt` (SDXL's does); "" is a prompt and is encoded.
    """

    @property
    def prompt(self) -> str: ...

    @property
    def negative(self) -> str | None: ...

    @property
    def seed(self) -> int: ...

    @property
    def control(self) -> SceneControl | None:
        """The scene's pose or framing control (`farm.render.control`), or None."""
        ...

    @property
    def control_image(self) -> Image.Image | None:
        """The control's map, at the render's size (`farm.controls.attach`)."""
        ...

    @property
    def dressing(self) -> tuple[Dressing, ...]:
        """The outfits and location with reference images it attends to (`Story.plan`)."""
        ...


@dataclass(frozen=True)
class SceneRender:
    """A `Scene` for callers without a story: benchmarks, the warm-up, tests."""

    prompt: str
    negative: str | None
    seed: int
    control: SceneControl | None = None
    control_image: Image.Image | None = None
    dressing: tuple[Dressing, ...] = ()


@dataclass(frozen=True)
class StepState:
    """What a step callback sees: enough to show progress and to test the merge switch."""

    step: int
    timestep: float
    uses_identity: bool
    latents: torch.Tensor


@dataclass
class RenderResult:
    images: list[Image.Image]
    timings: dict[str, float] = field(default_factory=dict)


def guided(guidance: float) -> bool:
    """Whether a render runs classifier-free guidance (two halves per UNet call), as SDXL's
    pipeline decides it: a scale of 1 or less is the conditional prediction alone."""
    return guidance > 1.0


def start_merge_step(style_strength: float, steps: int) -> int:
    """Last step index that still uses the text-only prompt (the reference's formula): steps
    0 to `start_merge_step`, that is start_merge_step + 1 of them, are text-only."""
    return min(int(style_strength / 100 * steps), MAX_MERGE_STEP)


@dataclass
class _Embeds:
    """Per-render conditioning, stacked along the batch."""

    id_prompt: torch.Tensor
    id_pooled: torch.Tensor
    text_prompt: torch.Tensor
    text_pooled: torch.Tensor
    negative: torch.Tensor
    negative_pooled: torch.Tensor


class PhotoMakerPipeline:
    def __init__(
        self,
        *,
        tokenizer: PreTrainedTokenizerBase,
        tokenizer_2: PreTrainedTokenizerBase,
        text_encoder: CLIPTextModel,
        text_encoder_2: CLIPTextModelWithProjection,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        scheduler: SchedulerMixin,
        id_encoder: IDEncoder,
        force_zeros_for_empty_prompt: bool = True,
        device: torch.device | None = None,
        prompt_truncation: str = "reference",
        noise: str = "cpu",
    ) -> None:
        """`prompt_truncation` and `noise` take the values of `FARM_PROMPT_TRUNCATION` and
        `FARM_NOISE` (farm/settings.py): the defaults follow the reference where it matters for
        likeness, and draw noise where it makes a render the same on every device."""
        if noise not in NOISE_DEVICES:
            raise ValueError(f"noise must be one of {NOISE_DEVICES}, got {noise!r}")
        self.tokenizer = tokenizer
        self.tokenizer_2 = tokenizer_2
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2
        self.unet = unet
        self.vae = vae
        self.scheduler = scheduler
        self.id_encoder = id_encoder
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt
        self.prompt_truncation = prompt_truncation
        self.noise = noise
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self._device = device if device is not None else unet.device
        # Where offloaded weights wait: set by `farm.render.memory.apply_vram_mode`.
        self.offload: Offload | None = None
        # The ControlNets and T2I-Adapters of scenes with a control map: set by the loader.
        self.controls: ControlModels | None = None
        # The tokens of outfits' and locations' reference images: set by the loader.
        self.reference_images: ReferenceImages | None = None

    @property
    def device(self) -> torch.device:
        """Where the pipeline computes, wherever its models wait between uses."""
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    # ------------------------------------------------------------------ prompts

    def check_prompt(
        self,
        prompt: str,
        tokens_per_trigger: Mapping[str, int],
        class_words: Mapping[str, str] | None = None,
    ) -> None:
        """Raise `InputError` if `prompt` cannot carry these identities (before any model work)."""
        register_triggers(self.tokenizer, list(tokens_per_trigger))
        register_triggers(self.tokenizer_2, list(tokens_per_trigger))
        expand_prompt(
            self.tokenizer, prompt, tokens_per_trigger, class_words, self.prompt_truncation
        )

    def _encode_ids(self, ids_1: Sequence[int], ids_2: Sequence[int]) -> tuple[torch.Tensor, ...]:
        """Penultimate hidden states of both encoders, concatenated (SDXL), and the pooled one."""
        device = self.device
        out_1 = self.text_encoder(torch.tensor([ids_1], device=device), output_hidden_states=True)
        out_2 = self.text_encoder_2(torch.tensor([ids_2], device=device), output_hidden_states=True)
        embeds = torch.cat([out_1.hidden_states[-2], out_2.hidden_states[-2]], dim=-1)
        return embeds[0], out_2.text_embeds[0]

    def _encode_text(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        def ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
            return tokenizer(
                prompt, padding="max_length", truncation=True, max_length=tokenizer.model_max_length
            ).input_ids

        return self._encode_ids(ids(self.tokenizer), ids(self.tokenizer_2))

    def encode_identity_prompt(
        self,
        prompt: str,
        identities: Mapping[str, IdentityTokens],
        class_words: Mapping[str, str] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The stacked ID embedding of one prompt: `[77, D]` and its pooled `[D2]`.

        Each trigger's class word is repeated once per ID token, both encoders run on the
        expanded trigger-free ids, and every repeated position is fused with its ID token (the
        fusion works on the concatenated vector, so both encoders' slices are replaced).
        """
        identities = self._named_in(prompt, identities)
        counts = {trigger: identity.num_tokens for trigger, identity in identities.items()}
        register_triggers(self.tokenizer, list(counts))
        register_triggers(self.tokenizer_2, list(counts))
        first = expand_prompt(self.tokenizer, prompt, counts, class_words, self.prompt_truncation)
        second = expand_prompt(
            self.tokenizer_2, prompt, counts, class_words, self.prompt_truncation
        )
        if first.positions != second.positions:
            raise RuntimeError("SDXL's two tokenizers disagree on the class-word positions")
        embeds, pooled = self._encode_ids(first.input_ids, second.input_ids)
        embeds = embeds.clone()
        for trigger, identity in identities.items():
            positions = list(first.positions[trigger])
            tokens = identity.flat().to(device=embeds.device)
            fused = self.id_encoder.fuse(embeds[positions], tokens)
            embeds[positions] = fused.to(embeds.dtype)
        return embeds, pooled

    @staticmethod
    def _named_in(
        prompt: str, identities: Mapping[str, IdentityTokens]
    ) -> Mapping[str, IdentityTokens]:
        """The identities whose trigger the prompt names (all of a story's cast may be given;
        a scene shows some of them). A prompt naming none gets the "no trigger" error."""
        named = present_triggers(prompt, list(identities))
        return {t: identities[t] for t in named} if named else identities

    def _negative(self, negative: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, pooled = self._encode_text(negative or "")
        if negative is None and self.force_zeros_for_empty_prompt:
            return torch.zeros_like(embeds), torch.zeros_like(pooled)
        return embeds, pooled

    def encode_batch(
        self,
        renders: Sequence[Scene],
        identities: Mapping[str, IdentityTokens],
        class_words: Mapping[str, str] | None,
    ) -> _Embeds:
        """Conditioning for every render; each distinct prompt is encoded once."""
        id_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        text_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        neg_cache: dict[str | None, tuple[torch.Tensor, torch.Tensor]] = {}
        rows: list[tuple[torch.Tensor, ...]] = []
        for render in renders:
            if render.prompt not in id_cache:
                id_cache[render.prompt] = self.encode_identity_prompt(
                    render.prompt, identities, class_words
                )
                text = text_only_prompt(render.prompt, list(identities))
                text_cache[render.prompt] = self._encode_text(text)
            if render.negative not in neg_cache:
                neg_cache[render.negative] = self._negative(render.negative)
            rows.append(
                (*id_cache[render.prompt], *text_cache[render.prompt], *neg_cache[render.negative])
            )
        stacked = [torch.stack(column) for column in zip(*rows, strict=True)]
        return _Embeds(*stacked)

    # ------------------------------------------------------------------ latents and images

    def prepare_latents(
        self, seeds: Sequence[int], height: int, width: int
    ) -> tuple[torch.Tensor, list[torch.Generator]]:
        """One generator per render: same seed, same noise, whatever the batch.

        On the CPU by default, in fp32, so that a seed gives the same picture on any device.
        `noise="device"` draws on the pipeline's device in its dtype, as the reference demo's
        `torch.Generator(device)` does, for seed-for-seed comparisons with it on that device
        (on a CPU in fp32 the two are the same). The generators are returned to the scheduler,
        whose stochastic steps (LCM, TCD) draw each render's noise from its own stream too.
        """
        shape = (
            self.unet.config.in_channels,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )
        if self.noise == "device":
            generators = [torch.Generator(self.device).manual_seed(seed) for seed in seeds]
            drawn = [
                torch.randn(shape, generator=g, device=self.device, dtype=self.dtype)
                for g in generators
            ]
            return torch.stack(drawn), generators
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        drawn = [torch.randn(shape, generator=generator) for generator in generators]
        return torch.stack(drawn).to(device=self.device, dtype=self.dtype), generators

    def decode_latents(self, latents: torch.Tensor) -> list[Image.Image]:
        """Pixels of `latents`; never a black or NaN picture.

        SDXL's VAE overflows in fp16: where its config says `force_upcast` it decodes in fp32
        (the loader already loads it so). A half-precision VAE that overflows anyway (a bf16
        one, or an "fp16-fix" VAE on an unlucky latent) is upcast for good and decodes again.
        """
        if not torch.isfinite(latents).all():
            raise RuntimeError(
                f"the UNet's latents are not finite in {self.dtype}: this render cannot be "
                "decoded (a half-precision overflow in the UNet; try fp32 or another seed)"
            )
        if self.vae.dtype == torch.float16 and self.vae.config.force_upcast:
            self.vae.to(torch.float32)
        pixels = self._decode(latents)
        finite = bool(torch.isfinite(pixels).all())  # one device sync on the usual path
        if not finite and self.vae.dtype != torch.float32:
            log.warning("the VAE overflowed in %s: decoding in fp32 from now on", self.vae.dtype)
            self.vae.to(torch.float32)
            pixels = self._decode(latents)
            finite = bool(torch.isfinite(pixels).all())
        if not finite:
            raise RuntimeError("the VAE decoded non-finite pixels even in fp32")
        pixels = (pixels / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
        return [Image.fromarray((p * 255).round().astype(np.uint8)) for p in pixels]

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample

    # ------------------------------------------------------------------ the render

    def check_inputs(
        self,
        renders: Sequence[Scene],
        identities: Mapping[str, IdentityTokens],
        height: int,
        width: int,
        steps: int,
        guidance: float,
        style_strength: float,
        class_words: Mapping[str, str] | None,
    ) -> None:
        if not renders:
            raise InputError("nothing to render: the batch is empty")
        if not identities:
            raise InputError("no identity given: PhotoMaker needs at least one character")
        # The VAE's factor is the only hard constraint: the UNet pads odd latent sizes itself.
        step = self.vae_scale_factor
        for name, value in (("height", height), ("width", width)):
            if value <= 0 or value % step:
                raise InputError(f"{name} must be a positive multiple of {step}, got {value}")
        if steps < 1:
            raise InputError(f"steps must be at least 1, got {steps}")
        if guidance < 0:
            raise InputError(f"guidance must be >= 0, got {guidance}")
        if not 0 <= style_strength <= 100:
            raise InputError(f"style_strength is a percentage (0-100), got {style_strength}")
        width_d = self.id_encoder.config.embed_dim
        for trigger, identity in identities.items():
            if identity.tokens.shape[-1] != width_d:
                raise InputError(
                    f"identity for {trigger!r} has width {identity.tokens.shape[-1]}, but this "
                    f"preset's encoder fuses width {width_d}: it was made by another model"
                )
        for prompt in {r.prompt for r in renders}:
            named = self._named_in(prompt, identities)
            counts = {trigger: identity.num_tokens for trigger, identity in named.items()}
            self.check_prompt(prompt, counts, class_words)
        for negative in {r.negative for r in renders if r.negative}:
            # A trigger is a token the text encoders have no embedding for (or one that means
            # the identity): in a negative it would crash the encoder or push the face away.
            named = present_triggers(negative, list(identities))
            if named:
                raise InputError(
                    f"negative prompt {negative!r} contains the trigger word {named[0]!r}; "
                    "a trigger word belongs only after the class word of the prompt: remove it"
                )
        check_controls(renders, self.controls, height, width)

    @torch.inference_mode()
    def __call__(
        self,
        renders: Sequence[Scene],
        identities: Mapping[str, IdentityTokens],
        *,
        height: int = 1024,
        width: int = 1024,
        steps: int = 50,
        guidance: float = 5.0,
        style_strength: float = 20.0,
        class_words: Mapping[str, str] | None = None,
        callback: Callable[[StepState], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
        consistency: ConsistentAttention | None = None,
        interrupted: Callable[[], bool] | None = None,
        resume: Checkpoint | None = None,
    ) -> RenderResult:
        """Render every scene of `renders` as one batch; `identities` maps trigger -> tokens.
        `consistency` shares self-attention across scenes (farm/render/consistency.py).
        `interrupted` asked true before a step stops the batch with `RenderInterrupted`,
        whose checkpoint, passed back as `resume`, continues it at that step with the same
        pixels (farm/render/checkpoint.py). Attention shared across scenes keeps state no
        checkpoint holds, so such a batch is never stopped midway."""
        # 0. Defaults: a fresh scheduler per call, since schedulers carry step state.
        scheduler = type(self.scheduler).from_config(self.scheduler.config)
        timings: dict[str, float] = {}
        started = time.perf_counter()

        # 1. Check inputs: every error is raised here, before any model runs.
        self.check_inputs(
            renders, identities, height, width, steps, guidance, style_strength, class_words
        )

        # 2. Call parameters.
        batch = len(renders)
        do_cfg = guided(guidance)
        merge_step = start_merge_step(style_strength, steps)

        # 3. Encode prompts: the ID prompt, the text-only prompt and the negative.
        embeds = self.encode_batch(renders, identities, class_words)
        timings["encode"] = time.perf_counter() - started

        # 4. Timesteps.
        scheduler.set_timesteps(steps, device=self.device)
        timesteps = scheduler.timesteps

        # 4b. Reference images of the outfits and locations the renders use: their tokens,
        # attended to through consistent self-attention (farm/render/reference_images.py).
        dressing: list[list[SharedTokens]] = []
        if any(r.dressing for r in renders):
            if self.reference_images is None:
                raise RuntimeError("this pipeline has no source of reference-image tokens")
            consistency, dressing = self.reference_images.attention(
                self, consistency, renders, height=height, width=width, steps=steps, guided=do_cfg
            )
            timings["reference_images"] = time.perf_counter() - started - timings["encode"]

        # 5. Latents, each from its render's own seed.
        seeds = [r.seed for r in renders]
        latents, generators = self.prepare_latents(seeds, height, width)
        latents = latents * scheduler.init_noise_sigma
        first = 0
        if resume is not None:  # where an interrupted run of this batch stopped
            if not resume.fits(seeds, steps) or consistency is not None:
                raise CheckpointError(f"the checkpoint at step {resume.step} is not this batch's")
            latents = resume.latents.to(self.device, latents.dtype)
            restore_scheduler(scheduler, resume.scheduler, self.device)
            restore_generators(generators, resume.generators)
            first = resume.step
        may_stop = interrupted is not None and consistency is None

        # 6. SDXL's micro-conditioning: original size, crop (0, 0), target size.
        time_ids = torch.tensor(
            [[height, width, 0, 0, height, width]], device=self.device, dtype=self.dtype
        ).repeat(batch * (2 if do_cfg else 1), 1)
        control = None  # a batch without control maps calls the UNet exactly as before
        if self.controls is not None and any(r.control for r in renders):
            control = BatchControl(
                self.controls, renders, do_cfg=do_cfg, device=self.device, dtype=self.dtype
            )

        # 7. Denoising loop, with self-attention shared across scenes if asked.
        denoise_started = time.perf_counter()
        shared_attention = (
            nullcontext()
            if consistency is None
            else consistency.installed(self.unet, renders, do_cfg, steps, dressing)
        )
        with shared_attention:
            for i, t in enumerate(timesteps):
                if i < first:
                    continue
                if cancelled is not None and cancelled():
                    raise RenderCancelled(f"cancelled at step {i}")
                if may_stop and i > first and interrupted():
                    state = (scheduler_state(scheduler), generator_states(generators))
                    stopped = Checkpoint(i, steps, tuple(seeds), latents, *state)
                    raise RenderInterrupted(stopped)
                if consistency is not None:
                    consistency.at_step(i)
                uses_identity = i > merge_step
                if uses_identity:
                    cond, pooled = embeds.id_prompt, embeds.id_pooled
                else:
                    cond, pooled = embeds.text_prompt, embeds.text_pooled
                if do_cfg:
                    cond = torch.cat([embeds.negative, cond])
                    pooled = torch.cat([embeds.negative_pooled, pooled])
                model_in = torch.cat([latents] * 2) if do_cfg else latents
                model_in = scheduler.scale_model_input(model_in, t)
                hidden = cond.to(self.dtype)
                added = {"text_embeds": pooled.to(self.dtype), "time_ids": time_ids}
                steer = {} if control is None else control.unet_kwargs(model_in, t, hidden, added)
                noise = self.unet(
                    model_in,
                    t,
                    encoder_hidden_states=hidden,
                    added_cond_kwargs=added,
                    return_dict=False,
                    **steer,
                )[0]
                if do_cfg:
                    uncond, text = noise.chunk(2)
                    noise = uncond + guidance * (text - uncond)
                latents = scheduler.step(
                    noise, t, latents, generator=generators, return_dict=False
                )[0]
                if callback is not None:
                    callback(StepState(i, float(t), uses_identity, latents))
        timings["denoise"] = time.perf_counter() - denoise_started

        # 8. Decode.
        decode_started = time.perf_counter()
        images = self.decode_latents(latents)
        timings["decode"] = time.perf_counter() - decode_started
        return RenderResult(images, timings)
