"""What an outfit's reference image costs on SDXL's architecture, on one GPU.

The farm's pipeline over the SDXL base + PhotoMaker V2 stack built in code with random weights
(`bench/sdxl_arch.py`: the real compute, no download), set up as `bench/gpu_render.py` sets up
the farm's path. Timed, each the median of `--repeats` after a warm-up: a render with
consistency off; making one image's tokens (VAE encode, one UNet pass on both guidance halves
per step of the window, the sampled tokens copied to the host); a render wearing an outfit with
that image, its tokens made. Also the bytes the tokens take and the peak GPU memory of each.

    PYTHONUNBUFFERED=1 python3 bench/reference_images.py --out bench/results/reference_images.json

On a CPU, at toy widths (a smoke check of the script, not a measurement of SDXL):
`.venv/bin/python bench/reference_images.py --cpu-smoke`.
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
from farm.render.loading import pick_dtype, vae_dtype  # noqa: E402
from farm.render.pipeline import PhotoMakerPipeline, SceneRender  # noqa: E402
from farm.render.reference_images import ReferenceImageTokens, render_image_tokens  # noqa: E402

COAT = ROOT / "tests/data/refs/scarletthead_woman/scarlett_0.jpg"  # any real picture


def timed(device: torch.device, fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median seconds of `repeats` runs after one warm-up, and the peak GPU memory (GB)."""
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
    off_s, off_gb = timed(device, render, args.repeats)
    tokens_s, tokens_gb = timed(device, tokens, args.repeats)
    dressed_s, dressed_gb = timed(device, lambda: render(outfit), args.repeats)
    results = {
        "device": device_name(device),
        "dtype": str(dtype),
        "arch": arch,
        "size": f"{args.size}x{args.size}",
        "steps": args.steps,
        "seconds": {
            "off": off_s,
            "outfit image's tokens": tokens_s,
            "outfit with image": dressed_s,
        },
        "ratio_to_off": {
            "outfit image's tokens": round(tokens_s / off_s, 3),
            "outfit with image": round(dressed_s / off_s, 3),
        },
        "peak_gb": {
            "off": off_gb,
            "outfit image's tokens": tokens_gb,
            "outfit with image": dressed_gb,
        },
        "token_bytes_per_image": made["coat"].nbytes,
    }
    print(json.dumps(results, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
