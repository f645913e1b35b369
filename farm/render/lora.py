"""UNet LoRAs fused into the weights: PhotoMaker's own, and the few-step LoRA a fast preset
stacks on top of it.

A worker hosts one preset for its whole life, so a LoRA never needs to be switched off again:
fusing it (W += scale * alpha/rank * up @ down) once at load costs nothing per step, unlike
keeping adapter layers around. Key layouts accepted:
- PhotoMaker's legacy attention-processor layout: `unet.<path>.processor.to_q_lora.down.weight`;
- diffusers' (`unet.<path>.lora.down.weight`) and PEFT's (`unet.<path>.lora_A.weight`);
- kohya's, which LCM-LoRA, Hyper-SD and SDXL-Lightning ship in: `lora_unet_<path with _>` +
  `.lora_down.weight` / `.lora_up.weight` / `.alpha`, resolved against this UNet's own layer
  names (kohya's SGM names, `lora_unet_input_blocks_...`, are not: convert those first).
`.alpha` scales by alpha / rank, as PEFT and kohya do. Text-encoder weights are skipped (with a
warning): PhotoMaker and the few-step LoRAs train none. Any other key is refused by name.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft
from safetensors.torch import load_file

from farm.errors import InputError
from farm.render.acceleration import projections_fused

log = logging.getLogger(__name__)

KOHYA_PREFIX = "lora_unet_"
_KOHYA_SUFFIXES = {".lora_down.weight": ".lora_A.weight", ".lora_up.weight": ".lora_B.weight"}
_TEXT_ENCODER_PREFIXES = ("text_encoder", "lora_te")
_PARTS = (".lora_A.weight", ".lora_B.weight", ".alpha")
_Layer = torch.nn.Linear | torch.nn.Conv2d


def read_lora_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix != ".safetensors":
        raise InputError(f"{path.name}: LoRA files are read as .safetensors only")
    return load_file(path)


def _layers(unet: UNet2DConditionModel) -> dict[str, _Layer]:
    return {name: m for name, m in unet.named_modules() if isinstance(m, _Layer)}


def _from_kohya(key: str, layers_by_kohya_name: Mapping[str, str]) -> str:
    name, _, rest = key.partition(".")
    path = layers_by_kohya_name.get(name)
    suffix = ".alpha" if rest == "alpha" else _KOHYA_SUFFIXES.get(f".{rest}")
    if path is None or suffix is None:
        raise InputError(f"LoRA key {key!r} names no layer of this UNet in kohya's layout")
    return path + suffix


def _normalise(
    state_dict: Mapping[str, torch.Tensor], layers: Mapping[str, _Layer]
) -> dict[str, torch.Tensor]:
    """Keys named after the UNet's layers: `<path>.lora_A.weight`, `.lora_B.weight`, `.alpha`."""
    by_kohya_name = {KOHYA_PREFIX + path.replace(".", "_"): path for path in layers}
    skipped = 0
    plain: dict[str, torch.Tensor] = {}
    normalised: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith(_TEXT_ENCODER_PREFIXES):
            skipped += 1
        elif key.startswith(KOHYA_PREFIX):
            normalised[_from_kohya(key, by_kohya_name)] = value
        else:
            plain[key.removeprefix("unet.")] = value
    if skipped:
        log.warning("LoRA: %d text-encoder weights skipped; only the UNet is fused", skipped)
    for key, value in convert_unet_state_dict_to_peft(plain).items():
        normalised[key.replace(".processor.", ".")] = value
    return normalised


def fuse_unet_lora(
    unet: UNet2DConditionModel, state_dict: Mapping[str, torch.Tensor], scale: float = 1.0
) -> int:
    """Fuse a LoRA into the UNet's weights; returns how many layers it changed.

    The sum is formed in fp32 and rounded once to the weight's dtype, so stacking two LoRAs on
    bf16 weights loses no more than loading a merged checkpoint would.
    """
    if projections_fused(unet):
        raise RuntimeError("fuse LoRAs before accelerate(): this UNet's projections are fused")
    layers = _layers(unet)
    weights = _normalise(state_dict, layers)
    paths = set()
    for key in weights:
        part = next((p for p in _PARTS if key.endswith(p)), None)
        if part is None:
            raise InputError(f"LoRA key {key!r} is not a LoRA down, up or alpha weight")
        paths.add(key.removesuffix(part))
    for path in sorted(paths):
        layer = layers.get(path)
        down = weights.get(f"{path}.lora_A.weight")
        up = weights.get(f"{path}.lora_B.weight")
        if layer is None:
            raise InputError(f"LoRA weight {path!r} does not match a layer of this UNet")
        if down is None or up is None:
            raise InputError(f"LoRA layer {path!r} lacks its down or up weight")
        rank = down.shape[0]
        alpha = weights.get(f"{path}.alpha")
        factor = scale * (float(alpha) / rank if alpha is not None else 1.0)
        weight = layer.weight
        delta = up.to(torch.float32).flatten(1) @ down.to(torch.float32).flatten(1)
        if delta.numel() != weight.numel():
            raise InputError(
                f"LoRA layer {path!r} makes a {tuple(delta.shape)} update for a "
                f"{tuple(weight.shape)} weight: it was trained for another model"
            )
        summed = weight.data.float() + factor * delta.reshape(weight.shape).to(weight.device)
        weight.data = summed.to(weight.dtype)
    if not paths:
        raise InputError("the LoRA file holds no UNet LoRA weights in a known layout")
    return len(paths)
