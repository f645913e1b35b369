"""What consistent self-attention costs: render time against `off`, and the bytes each reference
scene stores in story mode.

On the tiny preset (CPU) the same renders are made with consistency off, in batch mode and in
story mode, taking turns `--repeats` times (the median is reported: a shared machine drifts):
- `off` and `batch`: every render in batches of `--batch`;
- `story`: the reference batch (rendered once per story, its tokens recorded), then the other
  renders in batches, reading those tokens, as workers do; the reference batch is timed apart,
  since the farm pays it once per story, not per render.
The shared tokens are stored and loaded through object storage (a folder here), timed too.
An outfit's reference image is measured the same way: renders wearing an outfit with one image
(consistency off, its tokens made already, as every render after the first reads them), and
making that image's tokens (once per image, render size and settings, whatever the story).

For SDXL the stored bytes follow from the architecture alone (tokens per layer x channels x
layers x steps in the window x guidance branches x 2 bytes), so they are computed from the
published UNet config (bench/sdxl_arch.py) at 1024x1024, 50 steps, the default settings; its
render time needs a GPU (`bench/consistency_sdxl.py`).

    .venv/bin/python bench/consistency.py [--renders 8] [--steps 8] [--repeats 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402
from PIL import Image  # noqa: E402

from bench.sdxl_arch import SDXL_BASE  # noqa: E402
from bench.tiny_cost import run, tiny_parser  # noqa: E402
from farm.composition import Dressing  # noqa: E402
from farm.consistency import Consistency  # noqa: E402
from farm.recipe import RenderSettings  # noqa: E402
from farm.render.consistency import (  # noqa: E402
    ConsistentAttention,
    SharedTokens,
    load_tokens,
    self_attention_layers,
    store_tokens,
)
from farm.render.loading import LoadedPreset, load_preset  # noqa: E402
from farm.render.pipeline import SceneRender  # noqa: E402
from farm.render.presets import get_preset  # noqa: E402
from farm.render.reference_images import render_image_tokens  # noqa: E402
from farm.storage.local import LocalStorage  # noqa: E402
from tests.fixtures.tiny import photos_of  # noqa: E402

PROMPTS = ("reading in a library", "walking in a garden", "at a desk", "under a tree")


def renders(count: int) -> list[SceneRender]:
    return [
        SceneRender(f"a man img {PROMPTS[i % len(PROMPTS)]}", "lowres", 1000 + i)
        for i in range(count)
    ]


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def tiny_figures(args: argparse.Namespace, models_dir: Path) -> dict:
    loaded: LoadedPreset = load_preset(get_preset("tiny"), models_dir, device="cpu")
    identity = loaded.identity.tokens_for(photos_of("newton_man", 2))
    identities, words = {"img": identity}, {"img": "man"}
    settings = RenderSettings("tiny", 64, 64, args.steps, 5.0, "(No style)", 20)
    consistency = Consistency(mode="story", reference_scenes=args.references)
    scenes = renders(args.renders)
    references, others = scenes[: args.references], scenes[args.references :]

    def in_batches(items: list[SceneRender], attention: ConsistentAttention | None) -> None:
        for start in range(0, len(items), args.batch):
            batch = items[start : start + args.batch]
            loaded.render(batch, settings, identities, words, consistency=attention)

    shared: dict[str, SharedTokens] = {}

    def story_references() -> None:
        attention = ConsistentAttention(consistency, record=True)
        loaded.render(references, settings, identities, words, consistency=attention)
        shared["tokens"] = attention.recorded

    coat = Image.open(io.BytesIO(photos_of("scarletthead_woman", 1)[0].data)).convert("RGB")
    outfit = Dressing("wearing a red coat", ("coat.jpg",), Consistency(), (coat,))
    dressed = [replace(scene, dressing=(outfit,)) for scene in scenes]
    image_tokens: dict[str, SharedTokens] = {}

    def outfit_tokens() -> None:
        made = render_image_tokens(
            loaded.pipeline, outfit, height=64, width=64, steps=args.steps, guided=True
        )
        image_tokens["coat"] = made

    in_batches(scenes[: args.batch], None)  # warm-up
    in_batches(dressed[: args.batch], None)  # and the outfit's tokens, made once
    runs: dict[str, list[float]] = {
        "off": [],
        "batch": [],
        "story": [],
        "references": [],
        "outfit image": [],
        "outfit tokens": [],
    }
    for _ in range(args.repeats):
        runs["off"].append(timed(lambda: in_batches(scenes, None)))
        batch_mode = ConsistentAttention(consistency.model_copy(update={"mode": "batch"}))
        runs["batch"].append(timed(lambda: in_batches(scenes, batch_mode)))  # noqa: B023
        runs["references"].append(timed(story_references))
        reading = ConsistentAttention(consistency, reading=shared["tokens"])
        runs["story"].append(timed(lambda: in_batches(others, reading)))  # noqa: B023
        runs["outfit image"].append(timed(lambda: in_batches(dressed, None)))
        runs["outfit tokens"].append(timed(outfit_tokens))
    median = {name: statistics.median(seconds) for name, seconds in runs.items()}
    per_render = {
        "off": median["off"] / len(scenes),
        "batch": median["batch"] / len(scenes),
        "story (reading)": median["story"] / len(others),
        "story (reference batch)": median["references"] / len(references),
        "outfit with an image (tokens read)": median["outfit image"] / len(scenes),
        "outfit image's tokens (once per image)": median["outfit tokens"],
    }
    tokens = shared["tokens"]
    with tempfile.TemporaryDirectory() as folder:
        storage = LocalStorage(folder)
        store_s = timed(lambda: store_tokens(storage, "consistency/bench/x", tokens))
        load_s = timed(lambda: load_tokens(storage, "consistency/bench/x"))
    return {
        "renders": len(scenes),
        "reference_scenes": len(references),
        "steps": args.steps,
        "batch": args.batch,
        "size": "64x64",
        "seconds_per_render": {k: round(v, 4) for k, v in per_render.items()},
        "ratio_to_off": {k: round(v / per_render["off"], 3) for k, v in per_render.items()},
        "stored_bytes_per_reference_scene": tokens.nbytes // len(references),
        "stored_objects": len(tokens.steps) + 1,
        "stored_bytes_per_outfit_image": image_tokens["coat"].nbytes,
        "store_s": round(store_s, 4),
        "load_s": round(load_s, 4),
    }


def sdxl_bytes(height: int = 1024, width: int = 1024, steps: int = 50) -> dict:
    """Bytes one reference scene stores on SDXL at the default settings, from its UNet config:
    a block's self-attention sees the latent (1/8 of the image) halved once per down block
    before it, and up blocks mirror them."""
    settings = Consistency(mode="story")
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_BASE.unet)
    depth = len(unet.config.block_out_channels)
    latent = (height // 8) * (width // 8)
    in_window = sum(settings.applies(step, steps) for step in range(steps))
    per_step = 0
    layers = self_attention_layers(unet, settings.blocks)
    for name, attn in layers.items():
        block, place = name.split(".")[:2]
        if block == "mid_block":
            halvings = depth - 1
        else:
            halvings = int(place) if block == "down_blocks" else depth - 1 - int(place)
        tokens = latent // 4**halvings
        channels = attn.to_q.out_features
        per_step += max(1, round(settings.sample_rate * tokens)) * channels
    branches, half = 2, 2  # guidance's two halves; fp16/bf16
    total = per_step * in_window * branches * half
    return {
        "size": f"{width}x{height}",
        "steps": steps,
        "steps_in_window": in_window,
        "layers": len(layers),
        "bytes_per_reference_scene": total,
        "bytes_per_step_object_per_reference": per_step * branches * half,
        "gib_per_reference_scene": round(total / 2**30, 2),
    }


def main() -> None:
    parser = tiny_parser(__doc__.splitlines()[0], ROOT / "bench/results/consistency.json")
    parser.add_argument("--references", type=int, default=2)
    run(parser.parse_args(), tiny_figures, sdxl_bytes())


if __name__ == "__main__":
    main()
