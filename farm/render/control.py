"""Pose and framing per scene: ControlNet and T2I-Adapter residuals for a batch of renders.

A scene's control map (an OpenPose skeleton, a depth map, canny edges) steers the UNet through
one of two families of side networks, as PhotoMaker V2's own ControlNet and T2I-Adapter scripts
combine them with the ID embedding:
- a **ControlNet** runs beside the UNet at every step, on the same latents and prompt, and adds
  its outputs to the UNet's skip connections and middle block;
- a **T2I-Adapter** encodes the map once per batch into one feature per down block, added inside
  the UNet's down blocks at every step.
Which one a control type uses is decided by the folder found for it: a diffusers folder whose
`config.json` names `ControlNetModel` or `T2IAdapter`.

What differs from diffusers' SDXL ControlNet and adapter pipelines, and why: in a farm batch each
render brings its own map, type and `controlnet_conditioning_scale`, or none. Each type's network
runs on the rows that use it only, each row's residuals are multiplied by its own scale, and the
rows of other renders get zeros, which the UNet adds without changing a bit; a batch with no
control passes nothing, so its pixels are those of a farm without this module.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from diffusers import ControlNetModel, T2IAdapter
from PIL import Image

from farm.control_spec import ControlType, SceneControl
from farm.errors import InputError, ModelNotFoundError

log = logging.getLogger(__name__)

ControlModel = ControlNetModel | T2IAdapter


class Controlled(Protocol):
    """A render as this module reads it (the pipeline's `Scene`): its control and its map."""

    @property
    def control(self) -> SceneControl | None: ...

    @property
    def control_image(self) -> Image.Image | None: ...


# ---------------------------------------------------------------------- finding and loading


def family_of(folder: Path) -> str:
    """`ControlNetModel` or `T2IAdapter`, from the folder's config; anything else is refused."""
    name = json.loads((folder / "config.json").read_text()).get("_class_name")
    if name not in ("ControlNetModel", "T2IAdapter"):
        raise ModelNotFoundError(
            f"{folder} holds a {name!r}, not an SDXL ControlNetModel or T2IAdapter"
        )
    return name


def load_control_model(folder: Path, device: torch.device, dtype: torch.dtype) -> ControlModel:
    """A ControlNet or T2I-Adapter from its diffusers folder (the full-precision weights, or
    the fp16 variant where only that was downloaded), ready for inference."""
    cls = ControlNetModel if family_of(folder) == "ControlNetModel" else T2IAdapter
    try:
        model = cls.from_pretrained(folder, torch_dtype=dtype)
    except OSError:
        model = cls.from_pretrained(folder, torch_dtype=dtype, variant="fp16")
    return model.to(device).eval().requires_grad_(False)


class ControlModels:
    """A preset's control models, each loaded the first time a scene asks for its type: a
    worker that never sees a pose map never spends memory on a pose ControlNet."""

    def __init__(
        self,
        locate: Callable[[ControlType], Path],
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        """`locate` finds a type's folder (`farm.render.control_models.locate_control`): given,
        not imported, since finding one may build the tiny preset's, and the builders import
        the pipeline that imports this module."""
        self.locate = locate
        self.device = device
        self.dtype = dtype
        self._loaded: dict[ControlType, ControlModel] = {}

    def get(self, kind: ControlType) -> ControlModel:
        if kind not in self._loaded:
            folder = self.locate(kind)
            self._loaded[kind] = load_control_model(folder, self.device, self.dtype)
            log.info("loaded the %s control model from %s", kind.value, folder)
        return self._loaded[kind]


# ---------------------------------------------------------------------- a batch's residuals


def check_controls(
    renders: Sequence[Controlled], models: ControlModels | None, height: int, width: int
) -> None:
    """Refuse, before any model runs, a map of the wrong size or a type with no model here."""
    controlled = [r for r in renders if r.control is not None]
    if not controlled:
        return
    if models is None:
        raise InputError("this pipeline has no control models: scenes with control cannot render")
    for render in controlled:
        kind, image = render.control.type.value, render.control_image
        if image is None:
            raise ValueError(f"a {kind} control without its image: attach it first")
        if image.size != (width, height):
            w, h = image.size
            raise InputError(
                f"a {kind} control image is {w}x{h}, but the render is "
                f"{width}x{height}; a control map must have the render's size exactly"
            )
    kinds = {r.control.type for r in controlled}
    for kind in sorted(kinds):
        models.locate(kind)  # a missing model fails here, not mid-batch


def _pixels(image: Image.Image, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A map as diffusers' control image processor gives it: RGB in [0, 1], not normalised."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).to(device=device, dtype=dtype)


class BatchControl:
    """The control of one batch: which rows each type steers, their maps and scales, and (for
    T2I-Adapters) the features, computed once since they do not change with the step."""

    def __init__(
        self,
        models: ControlModels,
        renders: Sequence[Controlled],
        *,
        do_cfg: bool,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        batch = len(renders)
        self.batch = batch * (2 if do_cfg else 1)
        self._controlnets: list[tuple[ControlNetModel, list[int], torch.Tensor, torch.Tensor]] = []
        self._features: list[torch.Tensor] | None = None
        controls = [r.control for r in renders]
        for kind in sorted({c.type for c in controls if c is not None}):
            rows = [i for i, c in enumerate(controls) if c is not None and c.type == kind]
            maps = [renders[i].control_image for i in rows]
            images = torch.stack([_pixels(image, device, dtype) for image in maps])
            scales = torch.tensor([controls[i].scale for i in rows], device=device, dtype=dtype)
            if do_cfg:  # the unconditional half is steered too, as in diffusers
                rows = rows + [batch + i for i in rows]
                images, scales = torch.cat([images, images]), torch.cat([scales, scales])
            scales = scales.view(-1, 1, 1, 1)
            model = models.get(kind)
            if isinstance(model, ControlNetModel):
                self._controlnets.append((model, rows, images, scales))
            else:
                self._add_features(model(images), rows, scales)

    def _add_features(self, features: list[torch.Tensor], rows: list[int], scales: torch.Tensor):
        if self._features is None:
            self._features = [
                torch.zeros((self.batch, *f.shape[1:]), device=f.device, dtype=f.dtype)
                for f in features
            ]
        for total, feature in zip(self._features, features, strict=True):
            total[rows] += feature * scales

    def unet_kwargs(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: dict[str, torch.Tensor],
    ) -> dict[str, Any]:
        """The residuals to pass to this step's UNet call, for the whole (CFG-doubled) batch."""
        kwargs: dict[str, Any] = {}
        if self._features is not None:
            # The UNet pops from this list: a fresh one each step.
            kwargs["down_intrablock_additional_residuals"] = list(self._features)
        down: list[torch.Tensor] | None = None
        mid: torch.Tensor | None = None
        for model, rows, images, scales in self._controlnets:
            down_part, mid_part = model(
                sample[rows],
                timestep,
                encoder_hidden_states=encoder_hidden_states[rows],
                controlnet_cond=images,
                conditioning_scale=1.0,
                added_cond_kwargs={k: v[rows] for k, v in added_cond_kwargs.items()},
                return_dict=False,
            )
            if down is None or mid is None:
                down = [sample.new_zeros((self.batch, *d.shape[1:])) for d in down_part]
                mid = sample.new_zeros((self.batch, *mid_part.shape[1:]))
            for total, part in zip(down, down_part, strict=True):
                total[rows] += part * scales
            mid[rows] += mid_part * scales
        if down is not None:
            kwargs["down_block_additional_residuals"] = tuple(down)
            kwargs["mid_block_additional_residual"] = mid
        return kwargs
