"""How much of a pipeline lives on the GPU: everything, one model at a time, or one layer at a time.

SDXL + PhotoMaker in bf16 is ~7.5 GiB of weights, the UNet alone 4.8 GiB; the reference asks for
11 GB. The lower modes trade speed for memory:

| mode | on the GPU | VAE decode | estimated peak, 1024x1024, batch 1 |
|---|---|---|---|
| `full` | every model, all the time | batched | ~10.6 GiB |
| `model-offload` | the model running now (the UNet, while denoising) | sliced | ~6.2 GiB |
| `sequential-offload` | the layer running now; several times slower | sliced, tiled | ~3.4 GiB |

Offloaded weights wait in a CPU "home" map. While away, a parameter holds a NaN stand-in of its
shape backed by a single element, so a forward that computes with an absent weight fails (on a
GPU, a device mismatch; on a CPU-only test machine, NaN latents the decoder refuses) instead of
silently computing elsewhere. Weights are read-only at render time: sending them home drops
the device copy, never copies back. A dtype change while a model is away (the VAE's upcast) is
honoured when it is next brought in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from farm.render.acceleration import uncompile_unet

if TYPE_CHECKING:
    from farm.render.pipeline import PhotoMakerPipeline

log = logging.getLogger(__name__)

GIB = 2**30
# Sizes of SDXL + PhotoMaker V2 in 16-bit weights (parameter counts x 2 bytes): the UNet 2.6 B,
# both text encoders 0.82 B, the VAE 84 M (kept in fp32 where fp16 would overflow), the ID
# encoder 0.54 B, of which its CLIP vision tower (offloaded in the lower modes) is 0.3 B.
UNET_BYTES = int(4.8 * GIB)
TEXT_ENCODERS_BYTES = int(1.5 * GIB)
VAE_BYTES = int(0.3 * GIB)
ID_ENCODER_BYTES = int(1.0 * GIB)
ID_RESIDENT_BYTES = int(0.45 * GIB)  # the ID encoder without its vision tower
# Activation peaks for one render at 1024x1024 (scaled by pixel count): the UNet with its
# guidance pair under SDPA, and the VAE decoder's full-resolution feature maps.
UNET_ACTIVATIONS_BYTES = int(1.0 * GIB)
VAE_DECODE_BYTES = int(3.0 * GIB)
# Allocator fragmentation and cuBLAS/cuDNN workspaces: this, or 3% of a large card, which
# runs larger batches and fragments more.
MARGIN_BYTES = int(1.0 * GIB)
MARGIN_SHARE = 0.03


class VramMode(StrEnum):
    FULL = "full"
    MODEL_OFFLOAD = "model-offload"
    SEQUENTIAL_OFFLOAD = "sequential-offload"

    def lower(self) -> VramMode | None:
        """The next mode down the out-of-memory ladder; None at the bottom."""
        modes = list(VramMode)
        index = modes.index(self)
        return modes[index + 1] if index + 1 < len(modes) else None


def needed_bytes(mode: VramMode, *, height: int, width: int, batch: int) -> int:
    """Estimated peak of one batch in `mode`, from the sizes above, margin excluded."""
    megapixels = height * width / (1024 * 1024)
    unet_run = UNET_BYTES + int(batch * megapixels * UNET_ACTIVATIONS_BYTES)
    if mode is VramMode.FULL:
        weights = UNET_BYTES + TEXT_ENCODERS_BYTES + VAE_BYTES + ID_ENCODER_BYTES
        activations = batch * megapixels * max(UNET_ACTIVATIONS_BYTES, VAE_DECODE_BYTES)
        return weights + int(activations)
    if mode is VramMode.MODEL_OFFLOAD:
        decode = VAE_BYTES + int(megapixels * VAE_DECODE_BYTES)  # sliced: one image at a time
        return ID_RESIDENT_BYTES + max(unet_run, TEXT_ENCODERS_BYTES, decode)
    # One layer at a time: the largest layers are tens of MB; activations dominate, and the
    # tiled decode caps the VAE's at its 1024-pixel tile.
    tile = min(megapixels, 1.0)
    activations = max(batch * megapixels * UNET_ACTIVATIONS_BYTES, tile * VAE_DECODE_BYTES)
    return ID_RESIDENT_BYTES + int(activations)


def choose_vram_mode(
    free_bytes: int, total_bytes: int, *, height: int, width: int, batch: int
) -> VramMode:
    """The fastest mode whose estimated peak fits in the free memory, less a margin.

    With the sizes above, at 1024x1024: `full` needs ~14.5 GiB free for a batch of 2 and
    ~11.5 GiB for one render; `model-offload` ~7.2 GiB (an 8 GB card); below that,
    `sequential-offload`. The margin is 1 GiB or 3% of the card, whichever is larger.
    """
    budget = free_bytes - max(MARGIN_BYTES, int(total_bytes * MARGIN_SHARE))
    for mode in (VramMode.FULL, VramMode.MODEL_OFFLOAD):
        if needed_bytes(mode, height=height, width=width, batch=batch) <= budget:
            return mode
    return VramMode.SEQUENTIAL_OFFLOAD


def apply_vram_mode(pipeline: PhotoMakerPipeline, mode: VramMode) -> None:
    """Place `pipeline`'s models for `mode`; any earlier placement is undone first."""
    mode = VramMode(mode)
    if pipeline.offload is not None:
        pipeline.offload.remove()
        pipeline.offload = None
    device = pipeline.device
    vae = pipeline.vae
    # The ID encoder's fuse module and perceiver are small and are called through methods, not
    # forward: they stay on the device in every mode. Its vision tower is offloaded like a model.
    pipeline.id_encoder.to(device)
    if mode is VramMode.FULL:
        for model in _offloadable(pipeline):
            model.to(device)
        vae.disable_slicing()
        vae.disable_tiling()
    elif mode is VramMode.MODEL_OFFLOAD:
        pipeline.offload = ModelOffload(_offloadable(pipeline), device, _triggers(pipeline))
        vae.enable_slicing()
        vae.disable_tiling()
    else:
        uncompile_unet(pipeline)  # its hooks would sit inside the compiled graph
        pipeline.offload = LayerOffload(_offloadable(pipeline), device)
        vae.enable_slicing()
        vae.enable_tiling()
    release_cached_memory()
    log.info("VRAM mode %s on %s", mode, device)


def release_cached_memory() -> None:
    """Give the CUDA caching allocator's free blocks back, so the next try starts clean."""
    torch.cuda.empty_cache()  # a no-op where CUDA was never initialised


def _offloadable(pipeline: PhotoMakerPipeline) -> list[nn.Module]:
    return [
        pipeline.text_encoder,
        pipeline.text_encoder_2,
        pipeline.id_encoder.vision_model,
        pipeline.unet,
        pipeline.vae,
    ]


def _triggers(pipeline: PhotoMakerPipeline) -> dict[nn.Module, list[nn.Module]]:
    """The modules whose forward means "this model runs now". The VAE is used through
    `decode` and `encode` (an outfit's reference images), not `forward`: its decoder and
    encoder paths announce it."""
    vae = pipeline.vae
    paths = (vae.post_quant_conv, vae.decoder, vae.quant_conv, vae.encoder)
    return {vae: [m for m in paths if m is not None]}


class Homes:
    """CPU copies of offloaded tensors. While away, a tensor's data is a stand-in: the tensor
    object (and what holds it: modules, compiled graphs' guards) stays the same."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._homes: dict[torch.Tensor, torch.Tensor] = {}
        self._away: set[torch.Tensor] = set()

    def send_away(self, tensors: Iterable[torch.Tensor]) -> None:
        """Adopt tensors, wherever they are now, and leave stand-ins in their place."""
        with torch.inference_mode(False), torch.no_grad():
            for tensor in tensors:
                self._homes[tensor] = tensor.data.to("cpu")
                tensor.data = _stand_in(tensor)
                self._away.add(tensor)

    def bring(self, tensors: Iterable[torch.Tensor]) -> None:
        # Outside inference mode: the weights must stay ordinary tensors, whoever calls.
        with torch.inference_mode(False), torch.no_grad():
            for tensor in tensors:
                if tensor in self._away:
                    home = self._homes[tensor]
                    tensor.data = home.to(device=self.device, dtype=tensor.dtype)
                    self._away.discard(tensor)

    def leave(self, tensors: Iterable[torch.Tensor]) -> None:
        with torch.inference_mode(False), torch.no_grad():
            for tensor in tensors:
                if tensor not in self._away:
                    tensor.data = _stand_in(tensor)
                    self._away.add(tensor)

    def restore(self) -> None:
        """Every tensor back to its CPU copy, in its current dtype; nothing is adopted after."""
        with torch.inference_mode(False), torch.no_grad():
            for tensor, home in self._homes.items():
                tensor.data = home.to(dtype=tensor.dtype)
        self._homes.clear()
        self._away.clear()


def _stand_in(tensor: torch.Tensor) -> torch.Tensor:
    """One element broadcast to the tensor's shape: shape reads (`weight.shape[0]` in
    transformers' CLIP) still work, values read by mistake are NaN (0 for integer buffers)."""
    fill = float("nan") if tensor.dtype.is_floating_point else 0
    return torch.full((), fill, dtype=tensor.dtype).expand(tensor.shape)


def _own_tensors(module: nn.Module, recurse: bool) -> list[torch.Tensor]:
    return [*module.parameters(recurse=recurse), *module.buffers(recurse=recurse)]


class ModelOffload:
    """`model-offload`: the model about to run is brought in whole, and the one before it
    leaves. During denoising only the UNet is on the device; it moves once per batch."""

    def __init__(
        self,
        models: Sequence[nn.Module],
        device: torch.device,
        triggers: dict[nn.Module, list[nn.Module]],
    ) -> None:
        self.homes = Homes(device)
        self.resident: nn.Module | None = None
        self.handles: list[RemovableHandle] = []
        for model in models:
            self.homes.send_away(_own_tensors(model, recurse=True))
            for trigger in triggers.get(model, [model]):
                self.handles.append(trigger.register_forward_pre_hook(self._bringer(model)))

    def _bringer(self, model: nn.Module) -> Callable[..., None]:
        def bring(*_: object) -> None:
            self.bring(model)

        return bring

    def bring(self, model: nn.Module) -> None:
        if self.resident is model:
            return
        if self.resident is not None:
            self.homes.leave(_own_tensors(self.resident, recurse=True))
        self.homes.bring(_own_tensors(model, recurse=True))
        self.resident = model

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.homes.restore()
        self.resident = None


class LayerOffload:
    """`sequential-offload`: each module's own weights are brought in just before its forward
    and leave right after it. Buffers (position ids and the like) are small and stay."""

    def __init__(self, models: Sequence[nn.Module], device: torch.device) -> None:
        self.homes = Homes(device)
        self.handles: list[RemovableHandle] = []
        for model in models:
            with torch.inference_mode(False), torch.no_grad():
                for buffer in model.buffers():
                    buffer.data = buffer.data.to(device)
            for module in model.modules():
                weights = list(module.parameters(recurse=False))
                if not weights:
                    continue
                self.homes.send_away(weights)
                self.handles.append(module.register_forward_pre_hook(self._bringer(weights)))
                self.handles.append(module.register_forward_hook(self._leaver(weights)))

    def _bringer(self, weights: list[torch.Tensor]) -> Callable[..., None]:
        def bring(*_: object) -> None:
            self.homes.bring(weights)

        return bring

    def _leaver(self, weights: list[torch.Tensor]) -> Callable[..., None]:
        def leave(*_: object) -> None:
            self.homes.leave(weights)

        return leave

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.homes.restore()
