"""Consistent self-attention across the scenes of a story (StoryDiffusion's training-free method,
written here from its paper and public code).

PhotoMaker's ID tokens keep the face; nothing keeps the clothes, the hair or the props, because
each scene is denoised on its own. Consistent self-attention lets each scene's self-attention
layers also attend to a sample of the *other* scenes' tokens at the same step, so features the
scenes share are pulled together while each keeps its own layout (its own tokens are all there).

Three forms, chosen per story (`Consistency.mode`):
- `batch`: the scenes of one pipeline call attend to each other (StoryDiffusion's own form);
- `story`, writing: the reference scenes render as one batch in the batch form and hand out the
  tokens the others sampled from them (`SharedTokens`);
- `story`, reading: every other render attends to its own tokens and to those stored tokens, so
  a scene rendered on another GPU, later, sees exactly what it would have seen in one process.

What the farm does differently from the reference code, and why:
- the sampled tokens are drawn from a generator seeded by (render seed, step, token count), not
  from Python's global `random`, so the same story gives the same pixels on every worker;
- each scene shares one sample of its tokens per step and resolution, seen by every other scene
  (StoryDiffusion draws a mask per query image): one sample is what can be stored and reused;
- tokens a scene shares travel at half precision (`shared_dtype`), in every form, because that is
  how they are stored: the batch form and a stored reference give the same pixels;
- the reference's random skipping of the mechanism per layer call is replaced by an explicit
  step window (`Consistency.window`), and `strength` scales the weight of the other scenes'
  tokens in the softmax (a log-bias on their logits; 1 is the paper's method);
- keys and values are not stored: the tokens they are projected from are (half the bytes), and
  each layer projects them with its own weights when it reads them.

A render may also attend to the tokens of its outfits' and location's reference images
(`farm.render.reference_images`), given per render to `installed`: the same attention, with the
same strength, blocks and window, whatever the mode; with `mode: off` the images of a call then
do not attend to each other (`share=False`), only to their reference images.

Outside the window, and on the cross-attention layers, the UNet's own processor runs unchanged,
and with `mode: off` and no reference images nothing here is installed at all: those renders
are today's, to the byte.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from farm.consistency import Consistency
from farm.errors import InputError
from farm.storage.base import Storage

BLOCK_PREFIXES = {"down": "down_blocks.", "mid": "mid_block.", "up": "up_blocks."}
Recipe = tuple[str, str | None, int]  # a render's prompt, negative and seed: what it is


class Scene(Protocol):
    """A render as the pipeline reads it (`farm.render.pipeline.Scene`)."""

    @property
    def prompt(self) -> str: ...

    @property
    def negative(self) -> str | None: ...

    @property
    def seed(self) -> int: ...


def recipe(scene: Scene) -> Recipe:
    return (scene.prompt, scene.negative, scene.seed)


def sampled_tokens(seed: int, step: int, tokens: int, rate: float) -> torch.Tensor:
    """Which of a scene's `tokens` self-attention tokens the other scenes see at `step`, in
    order: `round(rate * tokens)` of them (at least one), drawn without replacement by a CPU
    generator seeded from sha256(seed, step, tokens), so every machine draws the same ones."""
    count = max(1, round(rate * tokens))
    digest = hashlib.sha256(f"{seed}:{step}:{tokens}".encode()).digest()
    generator = torch.Generator("cpu").manual_seed(int.from_bytes(digest[:8], "big"))
    return torch.randperm(tokens, generator=generator)[:count].sort().values


def shared_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision shared tokens travel and are stored in: the model's own when it is half
    (bf16 or fp16, lossless), fp16 for an fp32 model (a CPU)."""
    return dtype if dtype in (torch.float16, torch.bfloat16) else torch.float16


def on_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device`, without the host waiting for the GPU where it can. Stored tokens
    go to the GPU at every step (on SDXL about 105 MiB per reference scene or image): from
    pageable memory each copy blocks the host and runs at a fraction of the bus's speed, from
    pinned memory it is queued like a kernel."""
    if device.type != "cuda" or not tensor.is_pinned():
        return tensor.to(device)
    return tensor.to(device, non_blocking=True)


def sampled_on(
    device: torch.device, seed: int, step: int, tokens: int, rate: float
) -> torch.Tensor:
    """`sampled_tokens` on `device`, copied there without the host waiting."""
    drawn = sampled_tokens(seed, step, tokens, rate)
    return on_device(drawn.pin_memory() if device.type == "cuda" else drawn, device)


def to_host(tensor: torch.Tensor) -> torch.Tensor:
    """A copy of `tensor` in host memory. From a GPU it is pinned and copied without waiting,
    so it is whole only once the device has synchronized: whoever records tokens this way
    synchronizes before they are read (`ConsistentAttention.installed`,
    `ImageTokens.capturing`)."""
    if tensor.device.type != "cuda":
        return tensor.cpu()
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    return host.copy_(tensor, non_blocking=True)


def self_attention_layers(
    unet: UNet2DConditionModel, blocks: Sequence[str]
) -> dict[str, Attention]:
    """The UNet's spatial self-attention layers (`attn1` of each transformer block) in `blocks`."""
    prefixes = tuple(BLOCK_PREFIXES[block] for block in blocks)
    return {
        name: module
        for name, module in unet.named_modules()
        if isinstance(module, Attention)
        and name.endswith(".attn1")
        and name.startswith(prefixes)
        and not module.is_cross_attention
    }


def check_layers(unet: UNet2DConditionModel, blocks: Sequence[str]) -> dict[str, Attention]:
    """The layers consistency would change; an `InputError` naming the fix if there are none,
    or if one of them has a normalisation the consistent processor does not implement."""
    layers = self_attention_layers(unet, blocks)
    if not layers:
        raise InputError(
            f"consistency.blocks {list(blocks)}: this model has no self-attention there; "
            f"choose among {sorted(BLOCK_PREFIXES)} (StoryDiffusion uses 'up')"
        )
    for name, attn in layers.items():
        extras = ("spatial_norm", "group_norm", "norm_q", "norm_k")
        if any(getattr(attn, extra, None) is not None for extra in extras):
            raise InputError(f"consistency cannot run on {name}: it normalises its attention")
    return layers


@dataclass
class SharedTokens:
    """The tokens the reference scenes share, per step and layer: `[branches, references,
    tokens, channels]`, branches being the unconditional and conditional halves of classifier-
    free guidance (one branch without guidance). Kept on the CPU; a step's tensors go to the
    device when that step runs."""

    references: list[Recipe]
    branches: int
    tokens: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    key: str | None = None  # where they lie in object storage, once stored or read

    def row_of(self, scene: Scene) -> int | None:
        """The row of `scene` if it is one of the references (it then leaves its own row out,
        as it did when the references were rendered together)."""
        try:
            return self.references.index(recipe(scene))
        except ValueError:
            return None

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tokens.values())

    @property
    def steps(self) -> list[int]:
        return sorted({step for step, _ in self.tokens})

    def at(self, step: int, layer: str, device: torch.device) -> torch.Tensor:
        """A step's tensor of a layer on `device`. For a GPU it is pinned the first time, and
        stays so, which lets every later copy run without waiting (`on_device`)."""
        try:
            tensor = self.tokens[(step, layer)]
        except KeyError:
            raise RuntimeError(
                f"the stored reference tokens have nothing for step {step}, layer {layer}: "
                "they were made with other settings"
            ) from None
        if device.type == "cuda" and tensor.device.type == "cpu" and not tensor.is_pinned():
            tensor = self.tokens[(step, layer)] = tensor.pin_memory()
        return on_device(tensor, device)

    def step_bytes(self, step: int) -> bytes:
        """One step's tensors as safetensors: a step is the unit stored, so no object outgrows
        what one PUT may carry, whatever the model and the number of steps."""
        tensors = {
            layer: tensor.contiguous() for (at, layer), tensor in self.tokens.items() if at == step
        }
        return save_safetensors(tensors)

    def add_step(self, step: int, data: bytes) -> None:
        for layer, tensor in load_safetensors(data).items():
            self.tokens[(step, layer)] = tensor

    def manifest(self) -> bytes:
        return json.dumps(
            {"references": self.references, "branches": self.branches, "steps": self.steps}
        ).encode()

    @classmethod
    def from_manifest(cls, data: bytes) -> tuple[SharedTokens, list[int]]:
        document: dict[str, Any] = json.loads(data)
        references = [(p, n, int(s)) for p, n, s in document["references"]]
        return cls(references, document["branches"]), list(document["steps"])


def store_tokens(storage: Storage, prefix: str, tokens: SharedTokens) -> None:
    """Each step's object, then the manifest: a reader that finds the manifest finds them all.
    One layout for every kind of shared tokens (reference scenes', reference images')."""
    for step in tokens.steps:
        storage.put(_step_key(prefix, step), tokens.step_bytes(step))
    storage.put(f"{prefix}/manifest.json", tokens.manifest(), "application/json")
    tokens.key = prefix


def load_tokens(storage: Storage, prefix: str) -> SharedTokens | None:
    try:
        manifest = storage.get(f"{prefix}/manifest.json")
    except KeyError:
        return None
    tokens, steps = SharedTokens.from_manifest(manifest)
    tokens.key = prefix
    for step in steps:
        tokens.add_step(step, storage.get(_step_key(prefix, step)))
    return tokens


def _step_key(prefix: str, step: int) -> str:
    return f"{prefix}/step-{step:04d}.safetensors"


class ConsistentAttention:
    """Consistent self-attention for one pipeline call, in one of its three forms.

    `reading` (stored tokens of the reference scenes) makes every image attend to them; an
    image that is itself a reference leaves its own row out, exactly as it did when the
    references were rendered together. Without `reading`, the images of the call attend to each
    other, and with `record` the tokens they share are kept (`recorded`) for storing. One
    instance may serve several calls in turn (a batch split on out-of-memory, QC re-renders).
    """

    def __init__(
        self,
        settings: Consistency,
        *,
        reading: SharedTokens | None = None,
        record: bool = False,
        share: bool = True,
    ) -> None:
        """`share=False` (consistency off, reference images on): the images of a call do not
        attend to each other, only to the reference-image tokens each is given."""
        if reading is not None and record:
            raise ValueError("a call either reads stored tokens or records its own, not both")
        self.settings = settings
        self.reading = reading
        self.recorded: SharedTokens | None = None
        self._record = record
        self.share = share
        self._seeds: list[int] = []
        self._dressing: list[list[SharedTokens]] = []
        self._own_rows: list[int | None] = []
        self._guided = False
        self._steps = 0
        self._step = 0
        self._active = False
        self._samples: dict[tuple[int, int], torch.Tensor] = {}
        self._copying: torch.device | None = None  # a GPU recorded tokens are copied from

    @contextmanager
    def installed(
        self,
        unet: UNet2DConditionModel,
        renders: Sequence[Scene],
        guided: bool,
        steps: int,
        dressing: Sequence[Sequence[SharedTokens]] = (),
    ) -> Iterator[None]:
        """The consistent processor on the chosen layers for the duration; the UNet's own
        processors are back afterwards, whatever happened (the UNet is the worker's, shared
        by every later render). `dressing`, per render, holds the tokens of the reference
        images it attends to (none: an empty sequence)."""
        layers = check_layers(unet, self.settings.blocks)
        if self._record and self.recorded is not None:
            raise RuntimeError(
                "the reference scenes render as one batch, and it did not fit on this device: "
                "name fewer reference scenes (consistency.reference_scenes)"
            )
        self._seeds = [render.seed for render in renders]
        self._guided, self._steps = guided, steps
        reading = self.reading
        self._own_rows = [None if reading is None else reading.row_of(r) for r in renders]
        self._dressing = [list(parts) for parts in dressing] or [[] for _ in renders]
        if len(self._dressing) != len(renders):
            raise ValueError("reference-image tokens are given per render, one entry each")
        branches = 2 if guided else 1
        made = [reading] if reading is not None else []
        made += [tokens for parts in self._dressing for tokens in parts]
        if any(tokens.branches != branches for tokens in made):
            raise RuntimeError("the stored reference tokens were made with another guidance")
        if self._record:
            self.recorded = SharedTokens([recipe(r) for r in renders], 2 if guided else 1)
        originals = {name: attn.processor for name, attn in layers.items()}
        # A compiled UNet (FARM_COMPILE) was traced with its own processors, and the sampling
        # here draws from CPU generators no graph holds: it runs eager meanwhile, and keeps
        # its compiled forward for the renders after.
        compiled = vars(unet).pop("forward", None)
        try:
            for name, attn in layers.items():
                attn.set_processor(_Processor(self, name, originals[name]))
            self.at_step(0)
            yield
        finally:
            for name, attn in layers.items():
                attn.set_processor(originals[name])
            if compiled is not None:
                unet.forward = compiled
            if self._copying is not None:  # the recorded tokens are whole once it returns
                torch.cuda.synchronize(self._copying)
                self._copying = None

    def at_step(self, step: int) -> None:
        """Called before the UNet runs step `step`."""
        self._step = step
        self._active = self.settings.applies(step, self._steps)
        self._samples.clear()

    @property
    def active(self) -> bool:
        if not self._active:
            return False
        # A lone image with nothing stored to read has no other scene to attend to.
        if self.reading is not None or self._record or any(self._dressing):
            return True
        return self.share and len(self._seeds) > 1

    def _sample(self, image: int, tokens: int, device: torch.device) -> torch.Tensor:
        """`sampled_tokens` of an image at this step, on `device` (drawn once per step)."""
        key = (image, tokens)
        if key not in self._samples:
            rate = self.settings.sample_rate
            self._samples[key] = sampled_on(device, self._seeds[image], self._step, tokens, rate)
        return self._samples[key]

    def undressed_rows(self, rows: int) -> list[int]:
        """The rows (of `rows`: guidance halves x images) of the call's images without
        reference images, where others have some: they are computed as if no image had any
        (`dressed=False`), so they come out as they would without reference images in the
        story, to the byte."""
        if not any(self._dressing):
            return []
        images = len(self._dressing)
        plain = [image for image, parts in enumerate(self._dressing) if not parts]
        return [branch * images + image for branch in range(rows // images) for image in plain]

    def attend(
        self, name: str, attn: Attention, hidden_states: torch.Tensor, dressed: bool = True
    ) -> torch.Tensor | None:
        """The layer's consistent self-attention; None where no image has another scene's
        tokens to see (a lone reference), so that the layer's own processor runs: those
        renders are then exactly what they would be with consistency off. `dressed=False`
        leaves the reference images' tokens out."""
        branches = 2 if self._guided else 1
        total, count, channels = hidden_states.shape
        images = total // branches
        query, key, value = _project(attn, hidden_states)
        half = shared_dtype(hidden_states.dtype)
        by_image = hidden_states.view(branches, images, count, channels)
        shared: torch.Tensor | None = None
        excluded: list[int | None] = []
        if self.reading is not None:
            shared = self.reading.at(self._step, name, hidden_states.device)
            excluded = list(self._own_rows)
        elif self.share:
            picked = [
                by_image[:, b, self._sample(b, count, by_image.device)] for b in range(images)
            ]
            shared = torch.stack(picked, dim=1).to(half)
            if self.recorded is not None:
                self.recorded.tokens[(self._step, name)] = to_host(shared)
                if shared.device.type == "cuda":
                    self._copying = shared.device
            excluded = list(range(images))
        if shared is not None and shared.shape[1] == 1 and all(r is not None for r in excluded):
            shared, excluded = None, []  # a lone image: no other scene's tokens to see
        dressed = self._dressed(name, branches, hidden_states) if dressed else None
        if shared is None and dressed is None:
            return None
        extra_keys, extra_values = [], []
        rows = sampled = 0
        if shared is not None:
            rows, sampled = shared.shape[1], shared.shape[2]
            shared = shared.to(hidden_states.dtype).reshape(branches, rows * sampled, channels)
            _, shared_key, shared_value = _project(attn, shared)
            extra_keys.append(shared_key[:, None].expand(branches, images, *shared_key.shape[1:]))
            extra_values.append(
                shared_value[:, None].expand(branches, images, *shared_value.shape[1:])
            )
        lengths: list[int] | None = None
        if dressed is not None:
            tokens, lengths = dressed
            longest = tokens.shape[2]
            flat = tokens.to(hidden_states.dtype).reshape(branches, images * longest, channels)
            _, dressed_key, dressed_value = _project(attn, flat)
            extra_keys.append(dressed_key.view(branches, images, longest, -1))
            extra_values.append(dressed_value.view(branches, images, longest, -1))
        extra = sum(part.shape[2] for part in extra_keys)

        def with_extra(own: torch.Tensor, parts: list[torch.Tensor]) -> torch.Tensor:
            own = own.view(branches, images, count, -1)
            return torch.cat([own, *parts], dim=2).reshape(total, count + extra, -1)

        key, value = with_extra(key, extra_keys), with_extra(value, extra_values)
        mask = self._bias(images, count, rows, sampled, excluded, hidden_states, lengths)
        if mask is not None:
            mask = mask.repeat(branches, 1)[:, None, None, :]
        heads, inner = attn.heads, query.shape[-1]
        head_dim = inner // heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(total, -1, heads, head_dim).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(query), split(key), split(value), attn_mask=mask)
        out = out.transpose(1, 2).reshape(total, count, inner).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor

    def _dressed(
        self, name: str, branches: int, like: torch.Tensor
    ) -> tuple[torch.Tensor, list[int]] | None:
        """The reference-image tokens of each image at this step and layer, `[branches, images,
        longest, channels]` (each image's own, zero-padded to the longest), and how many each
        has; None when no image of the call has any."""
        if not any(self._dressing):
            return None
        per_image = [
            [tokens.at(self._step, name, like.device).flatten(1, 2) for tokens in parts]
            for parts in self._dressing
        ]
        lengths = [sum(t.shape[1] for t in parts) for parts in per_image]
        channels = like.shape[-1]
        half = shared_dtype(like.dtype)
        shape = (branches, len(per_image), max(lengths), channels)
        padded = torch.zeros(shape, dtype=half, device=like.device)
        for image, parts in enumerate(per_image):
            if parts:
                padded[:, image, : lengths[image]] = torch.cat(parts, dim=1)
        return padded, lengths

    def _bias(
        self,
        images: int,
        count: int,
        rows: int,
        sampled: int,
        excluded: Sequence[int | None],
        like: torch.Tensor,
        lengths: Sequence[int] | None = None,
    ) -> torch.Tensor | None:
        """Per image, what is added to the logits of each key: 0 for its own tokens,
        log(strength) for the shared ones and its reference images', -inf for its own row of
        the shared ones and for the padding after its reference images'. None when all are 0:
        attention without a mask runs on the GPU's fastest kernel (flash), one with a mask on a
        slower one."""
        weight = math.log(self.settings.strength)
        padded = lengths is not None and min(lengths) < max(lengths)
        if weight == 0 and all(row is None for row in excluded) and not padded:
            return None
        longest = 0 if lengths is None else max(lengths)
        columns = count + rows * sampled + longest
        bias = torch.zeros(images, columns, dtype=like.dtype, device=like.device)
        bias[:, count:] = weight
        for image, row in enumerate(excluded):
            if row is not None:
                start = count + row * sampled
                bias[image, start : start + sampled] = float("-inf")
        for image, length in enumerate(lengths or ()):
            bias[image, count + rows * sampled + length :] = float("-inf")
        return bias


class _Processor:
    """The processor set on one self-attention layer while a `ConsistentAttention` runs: the
    consistent path inside its step window, the layer's own processor everywhere else."""

    def __init__(self, run: ConsistentAttention, name: str, original: Any) -> None:
        self.run = run
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
        plain = encoder_hidden_states is not None or attention_mask is not None
        if plain or not self.run.active or hidden_states.ndim != 3:
            return self.original(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
            )
        out = self.run.attend(self.name, attn, hidden_states)
        if out is None:
            return self.original(attn, hidden_states, None, None, temb, *args, **kwargs)
        rows = self.run.undressed_rows(out.shape[0])
        if rows:  # as without reference images: computed so, then put in place
            plain = self.run.attend(self.name, attn, hidden_states, dressed=False)
            if plain is None:
                plain = self.original(attn, hidden_states, None, None, temb, *args, **kwargs)
            out[rows] = plain[rows]
        return out


def _project(attn: Attention, states: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Queries, keys and values, through the layer's fused projection where it has one (the
    farm fuses them: `farm.render.acceleration`), through its modules either way, so that
    offload hooks bring the weights in."""
    if getattr(attn, "fused_projections", False):
        return tuple(attn.to_qkv(states).chunk(3, dim=-1))
    return attn.to_q(states), attn.to_k(states), attn.to_v(states)
