"""Finding the control models (ControlNets and T2I-Adapters) on disk, and building the tiny
preset's in code.

Apart from `farm.render.control`, which runs them in a batch: finding one may build the tiny
preset, whose builders import the pipeline, and the pipeline imports `farm.render.control`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import ControlNetModel, T2IAdapter, UNet2DConditionModel

from farm.control_spec import ControlType
from farm.errors import ModelNotFoundError
from farm.render.control import ControlModel

# Bump when the tiny control models change: built folders are keyed by it.
TINY_CONTROLS_BUILD = 1
# The official SDXL weights for each type, in diffusers format: the ControlNet first (PhotoMaker
# V2's scripts use ControlNets), then the T2I-Adapter, lighter and run once per batch.
OFFICIAL: dict[ControlType, tuple[str, str]] = {
    ControlType.OPENPOSE: (
        "thibaud/controlnet-openpose-sdxl-1.0",
        "TencentARC/t2i-adapter-openpose-sdxl-1.0",
    ),
    ControlType.DEPTH: (
        "diffusers/controlnet-depth-sdxl-1.0",
        "TencentARC/t2i-adapter-depth-midas-sdxl-1.0",
    ),
    ControlType.CANNY: (
        "diffusers/controlnet-canny-sdxl-1.0",
        "TencentARC/t2i-adapter-canny-sdxl-1.0",
    ),
}
# The tiny build covers both families: ControlNets for pose and depth, an adapter for edges.
_TINY_FAMILY = {
    ControlType.OPENPOSE: "ControlNetModel",
    ControlType.DEPTH: "ControlNetModel",
    ControlType.CANNY: "T2IAdapter",
}


def controls_root(models_dir: Path) -> Path:
    """Where a studio puts the control models of the real presets, one folder per type."""
    return models_dir / "controls"


def _is_model_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def locate_control(models_dir: Path, kind: ControlType, *, tiny: bool = False) -> Path:
    """The diffusers folder of `kind`'s ControlNet or T2I-Adapter, never from the network.

    Looked for in `$FARM_MODELS_DIR/controls/<type>/`, then in a folder named after each
    official repository (as `huggingface-cli download --local-dir` leaves it), then in the
    Hugging Face cache. The tiny presets build theirs in code on first use.
    """
    if tiny:
        return ensure_tiny_controls(models_dir) / kind.value
    repos = OFFICIAL[kind]
    candidates = [controls_root(models_dir) / kind.value]
    candidates += [models_dir / repo.split("/")[-1] for repo in repos]
    for folder in candidates:
        if _is_model_folder(folder):
            return folder
    for repo in repos:
        cached = _hf_cached(repo)
        if cached is not None and _is_model_folder(cached):
            return cached
    raise ModelNotFoundError(
        f"control type {kind.value!r} needs an SDXL ControlNet or T2I-Adapter in diffusers "
        f"format: put one at {controls_root(models_dir) / kind.value} (e.g. {repos[0]} or "
        f"{repos[1]}, downloaded where internet is available)"
    )


def _hf_cached(repo_id: str) -> Path | None:
    from farm.render.presets import _hf_cached as cached  # one rule for "already in the cache"

    return cached(repo_id)


# ---------------------------------------------------------------------- the tiny build


def tiny_controlnet(unet: UNet2DConditionModel, seed: int) -> ControlNetModel:
    """A ControlNet made from the tiny UNet, as ControlNets are trained from their base.

    Its zero convolutions get small seeded random weights instead of zeros: a trained
    ControlNet's are not zero, and a zero one would add nothing, so the path could not be
    seen to work. One conditioning stage, since the tiny VAE downsamples by 2, not 8.
    """
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv in (*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block):
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.05)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * 0.05)
        last = controlnet.controlnet_cond_embedding.conv_out
        last.weight.copy_(torch.randn(last.weight.shape, generator=generator) * 0.05)
    return controlnet


def tiny_adapter(seed: int) -> T2IAdapter:
    """An SDXL-shaped T2I-Adapter for the tiny UNet: one feature per down block (32 and 64
    channels at a quarter of the image's side), as `full_adapter_xl` gives SDXL's."""
    torch.manual_seed(seed)
    return T2IAdapter(
        in_channels=3,
        channels=[32, 64],
        num_res_blocks=1,
        downscale_factor=4,
        adapter_type="full_adapter_xl",
    )


def build_tiny_controls(target: Path, sdxl_dir: Path) -> Path:
    """One folder per control type under `target`, in diffusers format (`save_pretrained`), so
    that the tiny presets load them through `load_control_model` as real presets do."""
    unet = UNet2DConditionModel.from_pretrained(sdxl_dir, subfolder="unet")
    for seed, kind in enumerate(ControlType, start=11):
        if _TINY_FAMILY[kind] == "ControlNetModel":
            model: ControlModel = tiny_controlnet(unet, seed)
        else:
            model = tiny_adapter(seed)
        model.save_pretrained(target / kind.value)
    return target


def ensure_tiny_controls(models_dir: Path) -> Path:
    """The tiny control models, built once beside the tiny preset (aside, then renamed, so a
    concurrent caller never sees half a folder)."""
    from farm.render.tiny import ensure_tiny  # torch-heavy and a builder: only when needed

    final = models_dir / "tiny" / f"controls-{TINY_CONTROLS_BUILD}"
    if all(_is_model_folder(final / kind.value) for kind in ControlType):
        return final
    sdxl_dir = ensure_tiny(models_dir) / "sdxl"
    scratch = Path(tempfile.mkdtemp(dir=final.parent, prefix=".building-controls-"))
    try:
        build_tiny_controls(scratch, sdxl_dir)
        try:
            os.rename(scratch, final)
        except OSError:
            if not all(_is_model_folder(final / kind.value) for kind in ControlType):
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final
