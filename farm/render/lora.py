"""UNet LoRAs fused into the weights: PhotoMaker's own, and any extra one a preset stacks on top.

A worker hosts one preset for its whole life, so a LoRA never needs to be switched off again:
fusing it (W += scale * up @ down) once at load costs nothing per step, unlike keeping adapter
layers around. Key layouts accepted: PhotoMaker's legacy attention-processor layout
(`unet.<path>.processor.to_q_lora.down.weight`) and diffusers/PEFT's
(`unet.<path>.to_q.lora_A.weight`, with optional `.alpha`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from diffusers import UNet2DConditionModel
from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft

from farm.errors import InputError


def _normalise(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of the UNet's own modules: `<path>.lora_A.weight` / `<path>.lora_B.weight`."""
    unet_only = {}
    for key, value in state_dict.items():
        if key.startswith("text_encoder"):
            continue  # PhotoMaker trains no text-encoder LoRA; other files may carry one
        unet_only[key.removeprefix("unet.")] = value
    converted = convert_unet_state_dict_to_peft(unet_only)
    return {k.replace(".processor.", "."): v for k, v in converted.items()}


def fuse_unet_lora(
    unet: UNet2DConditionModel, state_dict: Mapping[str, torch.Tensor], scale: float = 1.0
) -> int:
    """Fuse a LoRA into the UNet's weights; returns how many layers it changed.

    The rank is read from `lora_A.weight.shape[0]`; an `.alpha` entry scales by alpha / rank, as
    PEFT does (PhotoMaker's files have none, so their scale is 1).
    """
    weights = _normalise(state_dict)
    modules = dict(unet.named_modules())
    changed = 0
    for key in sorted(weights):
        if not key.endswith(".lora_A.weight"):
            continue
        path = key.removesuffix(".lora_A.weight")
        up = weights.get(f"{path}.lora_B.weight")
        layer = modules.get(path)
        if up is None or not isinstance(layer, torch.nn.Linear | torch.nn.Conv2d):
            raise InputError(f"LoRA weight {key!r} does not match a layer of this UNet")
        down = weights[key]
        rank = down.shape[0]
        alpha = weights.get(f"{path}.alpha")
        factor = scale * (float(alpha) / rank if alpha is not None else 1.0)
        weight = layer.weight
        delta = up.to(torch.float32).flatten(1) @ down.to(torch.float32).flatten(1)
        weight.data += (factor * delta).reshape(weight.shape).to(weight.device, weight.dtype)
        changed += 1
    if changed == 0:
        raise InputError("the LoRA file holds no UNet LoRA weights in a known layout")
    return changed
