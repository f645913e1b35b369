"""What consistent self-attention and an outfit's reference image cost on SDXL's architecture,
on one GPU.

The farm's pipeline over the SDXL base + PhotoMaker V2 stack built in code with random weights
(`bench/sdxl_arch.py`: the real compute, no download), set up as `bench/gpu_render.py` sets up
the farm's path. Timed, each the median of `--repeats` after a warm-up of its shape:
- one render with consistency off; making one outfit image's tokens (VAE encode, one UNet pass
  on both guidance halves per step of the window, the sampled tokens copied to the host); one
  render wearing an outfit with that image, its tokens made;
- a batch of `--batch` renders with consistency off, the same batch in `batch` mode, the story's
  reference batch (`--batch` reference scenes, recording their tokens to the host, as the farm
  renders it once per story) and a batch of other scenes in `story` mode reading those tokens
  (copied to the GPU per step, as a worker does).
Also the bytes the tokens take (per image and per reference scene) and the peak GPU memory of
each.

    PYTHONUNBUFFERED=1 python3 bench/consistency_sdxl.py --out bench/results/consistency_sdxl.json

On a CPU, at toy widths (a smoke check of the script, not a measurement of SDXL):
`.venv/bin/python bench/consistency_sdxl.py --cpu-smoke`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bench.gpu_render import (  # noqa: E402
    NEGATIVE,
    PROMPT,
    STYLE_STRENGTH,
    TRIGGER,
    device_name,
    peak_gb,
    random_identity,
    reset_peak,
    synchronize,
)
from bench.sdxl_arch import ARCHS, build_stack  # noqa: E402
from farm.composition import Dressing  # noqa: E402
from farm.consistency import Consistency  # noqa: E402
from farm.render.acceleration import accelerate  # noqa: E402
from farm.render.consistency import ConsistentAttention  # noqa: E402
from farm.render.loading import pick_dtype, vae_dtype  # noqa: E402
from farm.render.pipeline import PhotoMakerPipeline, SceneRender  # noqa: E402
from farm.render.reference_images import ReferenceImageTokens, render_image_tokens  # noqa: E402

COAT = ROOT / "tests/data/refs/scarletthead_woman/scarlett_0.jpg"  # any real picture


def timed(
    device: torch.device, fn: Callable[[], object], repeats: int, *, warm_up: bool = True
) -> tuple[float, float]:
    """Median seconds of `repeats` runs, after one warm-up unless a run of the same shape just
    had one, and the peak GPU memory (GB)."""
    if warm_up:
        fn()
    seconds = []
    reset_peak(device)
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        fn()
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), peak_gb(device) or 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--batch", type=int, default=2, help="renders per batch and reference scenes"
    )
    parser.add_argument("--cpu-smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.cpu_smoke:
        device, arch, args.size, args.steps, args.repeats = torch.device("cpu"), "small", 128, 3, 1
    else:
        device, arch = torch.device("cuda"), "sdxl"
    dtype = pick_dtype(device)
    stack = build_stack(ARCHS[arch], device, dtype)
    decode_dtype = vae_dtype(dtype, stack.vae.config.force_upcast)
    stack.vae.to(decode_dtype)
    pipeline = PhotoMakerPipeline(**vars(stack), device=device)
    accelerate(pipeline, compile_unet=False)
    identities = {TRIGGER: random_identity(stack)}
    outfit = Dressing("wearing a red coat", ("coat",), Consistency(), (Image.open(COAT),))
    options = dict(
        height=args.size,
        width=args.size,
        steps=args.steps,
        guidance=5.0,
        style_strength=STYLE_STRENGTH,
    )

    def render(*dressing: Dressing) -> None:
        pipeline([SceneRender(PROMPT, NEGATIVE, 1, dressing=dressing)], identities, **options)

    made = {}

    def tokens() -> None:
        made["coat"] = render_image_tokens(
            pipeline, outfit, height=args.size, width=args.size, steps=args.steps, guided=True
        )

    pipeline.reference_images = ReferenceImageTokens(arch)  # in memory: made at the warm-up
    seconds, peaks = {}, {}
    seconds["off"], peaks["off"] = timed(device, render, args.repeats)
    seconds["outfit image's tokens"], peaks["outfit image's tokens"] = timed(
        device, tokens, args.repeats
    )
    seconds["outfit with image"], peaks["outfit with image"] = timed(
        device, lambda: render(outfit), args.repeats
    )

    story = Consistency(mode="story", reference_scenes=args.batch)
    scenes = [SceneRender(PROMPT, NEGATIVE, seed) for seed in range(1, 2 * args.batch + 1)]
    references, others = scenes[: args.batch], scenes[args.batch :]
    recorded = {}

    def batch(renders: list[SceneRender], attention: ConsistentAttention | None) -> None:
        pipeline(renders, identities, consistency=attention, **options)

    def reference_batch() -> None:
        attention = ConsistentAttention(story, record=True)
        batch(references, attention)
        recorded["tokens"] = attention.recorded

    in_batch = Consistency(mode="batch")
    # One warm-up for the batch shape; the runs after it differ only in the attention processor.
    plain = "batch off"
    seconds[plain], peaks[plain] = timed(device, lambda: batch(others, None), args.repeats)
    for name, fn in (
        ("batch mode", lambda: batch(others, ConsistentAttention(in_batch))),
        ("story reference batch", reference_batch),
        (
            "story reading",
            lambda: batch(others, ConsistentAttention(story, reading=recorded["tokens"])),
        ),
    ):
        seconds[name], peaks[name] = timed(device, fn, args.repeats, warm_up=False)
    single = ("outfit image's tokens", "outfit with image")
    results = {
        "device": device_name(device),
        "dtype": str(dtype),
        "arch": arch,
        "size": f"{args.size}x{args.size}",
        "steps": args.steps,
        "batch": args.batch,
        "seconds": seconds,
        "ratio_to_off": {
            **{name: round(seconds[name] / seconds["off"], 3) for name in single},
            **{
                name: round(seconds[name] / seconds[plain], 3)
                for name in ("batch mode", "story reference batch", "story reading")
            },
        },
        "peak_gb": peaks,
        "token_bytes_per_image": made["coat"].nbytes,
        "token_bytes_per_reference_scene": recorded["tokens"].nbytes // args.batch,
    }
    print(json.dumps(results, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
