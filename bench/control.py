"""What a control map costs per render: a ControlNet (run beside the UNet at every step) and a
T2I-Adapter (run once per batch), against no control, and what an SDXL ControlNet weighs.

On the tiny preset (CPU) the same renders are made with no control, with an OpenPose map
through the tiny ControlNet and with an edge map through the tiny T2I-Adapter, taking turns
`--repeats` times (the median is reported: a shared machine drifts). For SDXL the size of a
ControlNet follows from the architecture alone: `ControlNetModel.from_unet` on SDXL base's
published UNet config, on the meta device (its render time needs a GPU; not measured here).

    .venv/bin/python bench/control.py [--renders 8] [--steps 8] [--repeats 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from diffusers import ControlNetModel, UNet2DConditionModel  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from bench.sdxl_arch import SDXL_BASE  # noqa: E402
from bench.tiny_cost import run, tiny_parser  # noqa: E402
from farm.control_spec import ControlType, SceneControl  # noqa: E402
from farm.recipe import RenderSettings  # noqa: E402
from farm.render.loading import load_preset  # noqa: E402
from farm.render.pipeline import SceneRender  # noqa: E402
from farm.render.presets import get_preset  # noqa: E402
from tests.fixtures.tiny import photos_of  # noqa: E402


def pose_map() -> Image.Image:
    image = Image.new("RGB", (64, 64))
    ImageDraw.Draw(image).line([(32, 8), (32, 40), (20, 60)], fill=(255, 0, 0), width=3)
    return image


def scenes(count: int, kind: ControlType | None) -> list[SceneRender]:
    if kind is None:
        return [SceneRender("a man img standing", "lowres", 1000 + i) for i in range(count)]
    control = SceneControl(image="bench.png", type=kind, scale=1.0)
    return [
        SceneRender("a man img standing", "lowres", 1000 + i, control, pose_map())
        for i in range(count)
    ]


def tiny_figures(args: argparse.Namespace, models_dir: Path) -> dict:
    loaded = load_preset(get_preset("tiny"), models_dir, device="cpu")
    identities = {"img": loaded.identity.tokens_for(photos_of("newton_man", 1))}
    settings = RenderSettings("tiny", 64, 64, args.steps, 5.0, "(No style)", 20)
    cases = {
        "none": None,
        "openpose (ControlNet)": ControlType.OPENPOSE,
        "canny (T2I-Adapter)": ControlType.CANNY,
    }

    def run(kind: ControlType | None) -> float:
        todo = scenes(args.renders, kind)
        started = time.perf_counter()
        for start in range(0, len(todo), args.batch):
            loaded.render(todo[start : start + args.batch], settings, identities, {"img": "man"})
        return time.perf_counter() - started

    for kind in cases.values():  # warm-up: loads each control model once
        run(kind)
    runs: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, kind in cases.items():
            runs[name].append(run(kind))
    per_render = {name: statistics.median(s) / args.renders for name, s in runs.items()}
    return {
        "renders": args.renders,
        "steps": args.steps,
        "batch": args.batch,
        "size": "64x64",
        "seconds_per_render": {k: round(v, 4) for k, v in per_render.items()},
        "ratio_to_none": {k: round(v / per_render["none"], 3) for k, v in per_render.items()},
    }


def sdxl_controlnet() -> dict:
    """The parameters of an SDXL ControlNet made from SDXL base's UNet, as the official ones
    are (diffusers/controlnet-*-sdxl-1.0), against the UNet's own."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_BASE.unet)
        controlnet = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
    params = sum(p.numel() for p in controlnet.parameters())
    unet_params = sum(p.numel() for p in unet.parameters())
    return {
        "controlnet_parameters": params,
        "unet_parameters": unet_params,
        "ratio_to_unet": round(params / unet_params, 3),
        "gib_in_fp16": round(params * 2 / 2**30, 2),
    }


def main() -> None:
    parser = tiny_parser(__doc__.splitlines()[0], ROOT / "bench/results/control.json")
    run(parser.parse_args(), tiny_figures, sdxl_controlnet())


if __name__ == "__main__":
    main()
