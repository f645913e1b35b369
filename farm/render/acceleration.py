"""Making a loaded pipeline fast on its device without changing what it computes: SDPA attention,
fused QKV projections, channels-last convolutions, and optionally a compiled UNet.

All but compiling also run on a CPU: the tiny preset then takes the same code path as a GPU
worker, and the tests see that the pixels stay the same. LoRAs are fused into the weights
before this (`fuse_unet_lora` refuses a UNet whose projections are fused), and VRAM modes are
applied after it (fusing reads the weights, which an offloaded model does not hold).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

from farm.settings import COMPILE_SETTINGS

if TYPE_CHECKING:
    from farm.render.pipeline import PhotoMakerPipeline

log = logging.getLogger(__name__)

# Autotuned kernels, no CUDA graphs: a shard's batches change size (its last one, the OOM
# ladder), and graphs keep a memory pool per shape, which the low-VRAM modes cannot spare.
COMPILE_MODE = "max-autotune-no-cudagraphs"


def accelerate(pipeline: PhotoMakerPipeline, *, compile_unet: bool = False) -> None:
    """Speed `pipeline` up in place; calling it again changes nothing (compiling included)."""
    if not projections_fused(pipeline.unet):
        if pipeline.offload is not None:
            raise RuntimeError("accelerate() reads the weights: call it before apply_vram_mode()")
        for model in (pipeline.unet, pipeline.vae):
            model.set_attn_processor(AttnProcessor2_0())
            model.fuse_qkv_projections()  # sets the fused SDPA processor
            _drop_unfused_projections(model)
            model.requires_grad_(False)  # the fused layers are new, made trainable
            model.to(memory_format=torch.channels_last)
    if compile_unet:
        compile_unet_forward(pipeline)


def compile_wanted(setting: str, device: torch.device) -> bool:
    """`FARM_COMPILE`: off (default), on (CUDA only: on a CPU compiling costs more than it
    saves), or force (any device)."""
    if setting not in COMPILE_SETTINGS:
        raise ValueError(f"compile setting must be one of {COMPILE_SETTINGS}, got {setting!r}")
    return setting == "force" or (setting == "on" and device.type == "cuda")


def projections_fused(model: nn.Module) -> bool:
    return any(getattr(m, "fused_projections", False) for m in model.modules())


def _drop_unfused_projections(model: nn.Module) -> None:
    """`fuse_qkv_projections` keeps the separate q/k/v layers so that it can unfuse, which a
    worker never does: in SDXL's UNet they are 0.65 B parameters, 1.2 GiB in bf16, that would
    sit on the GPU unused. Cross-attention keeps `to_q` (its keys and values are fused apart)."""
    for module in model.modules():
        if isinstance(module, Attention) and module.fused_projections:
            unused = ("to_k", "to_v") if module.is_cross_attention else ("to_q", "to_k", "to_v")
            for name in unused:
                delattr(module, name)


def compile_unet_forward(pipeline: PhotoMakerPipeline, *, backend: str = "inductor") -> None:
    """Compile the UNet's forward once per process (the first call of each batch shape pays,
    which `warm_up` does). Only `forward` is compiled, so the model-offload hook, which runs
    around it, stays outside the graph."""
    unet = pipeline.unet
    if is_compiled(unet):
        return
    mode = COMPILE_MODE if backend == "inductor" else None
    unet.forward = torch.compile(unet.forward, backend=backend, mode=mode, fullgraph=True)
    log.info("UNet compiled (%s, %s)", backend, mode)


def is_compiled(unet: nn.Module) -> bool:
    return "forward" in vars(unet)


def uncompile_unet(pipeline: PhotoMakerPipeline) -> None:
    """Back to the eager forward: sequential offload hooks every layer, inside the graph."""
    vars(pipeline.unet).pop("forward", None)
