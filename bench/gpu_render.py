"""The farm's render path against plain diffusers SDXL, side by side, on one GPU.

Both pipelines run over the same SDXL base 1.0 + PhotoMaker V2 stack, built in code with random
weights (`bench/sdxl_arch.py`: the published architecture, hence the real compute, and no
download). For the 30-step render and the 4-step fast mode, at every batch size, each pipeline
gets a short warm-up (compilation, kernel autotuning, the allocator) and then timed runs; the
table gives seconds per image, images per second and peak GPU memory, and the farm/diffusers
ratio of images per second. The farm path is `PhotoMakerPipeline` after the farm's own
acceleration, with precomputed ID tokens as a worker serves them from its cache (so the fuse
step is included); the baseline is diffusers' `StableDiffusionXLPipeline` as its docs run SDXL:
same dtype, its defaults (SDPA attention), everything on the GPU. Then the farm's low-VRAM modes
render at batch 1, for their peak memory. The baseline runs first: the farm's acceleration
changes the shared modules in place.

On a GPU machine with no network, from the repository root (the wheels come from
`bench/gpu_wheels.sh`, run once where PyPI is reachable; PyTorch is the machine's own):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
    PYTHONUNBUFFERED=1 python3 bench/gpu_render.py --out bench/results/gpu_render.json

That measures the farm as it ships (`FARM_COMPILE=off`); warm-ups and timed runs stay within
`--budget-s` (420 s by default): a case that would overrun it is skipped and says so.
`--compile` measures the farm with its compiled UNet; compiling happens in the warm-ups, once
per batch shape, can take minutes, and is reported on its own line.

On a CPU, at toy widths and a small size (a smoke check of the script, not a measurement of
SDXL): `.venv/bin/python bench/gpu_render.py --cpu-smoke`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import diffusers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from diffusers import StableDiffusionXLPipeline  # noqa: E402
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: E402
from PIL import Image  # noqa: E402

from bench.sdxl_arch import ARCHS, SdxlArch, SdxlStack, build_stack  # noqa: E402
from farm.identity.prompt import text_only_prompt  # noqa: E402
from farm.identity.tokens import IdentityTokens  # noqa: E402
from farm.render.acceleration import accelerate  # noqa: E402
from farm.render.loading import pick_dtype, vae_dtype  # noqa: E402
from farm.render.memory import VramMode, apply_vram_mode  # noqa: E402
from farm.render.pipeline import PhotoMakerPipeline, SceneRender  # noqa: E402
from farm.render.presets import get_preset  # noqa: E402
from farm.render.schedulers import scheduler_for  # noqa: E402
from farm.render.tiny import sdxl_scheduler  # noqa: E402

TRIGGER = "img"
PROMPT = f"a photo of a man {TRIGGER} reading a book in a library"
NEGATIVE = "lowres, blurry"
STYLE_STRENGTH = 20.0
PHOTOS = 2  # the character's reference photos: 2 x 2 ID tokens with PhotoMaker V2
SPEEDUP_TARGET = 1.3
LOW_VRAM_TARGET_GB = 8.0
LOW_VRAM_MODES = (VramMode.MODEL_OFFLOAD, VramMode.SEQUENTIAL_OFFLOAD)
QUALITY_PRESET = "photomaker-v2"
FAST_PRESET = "photomaker-v2-lightning"  # SDXL-Lightning's 4-step LoRA
WARMUP_STEPS = 2  # enough to compile and autotune every shape a case uses


@dataclass(frozen=True)
class Mode:
    """One render setting both pipelines run with: steps, guidance and scheduler."""

    name: str
    steps: int
    guidance: float
    scheduler: Callable[[], SchedulerMixin]


@dataclass
class CaseResult:
    path: str
    mode: str
    batch: int
    steps: int
    seconds_per_image: float | None = None
    images_per_s: float | None = None
    peak_gb: float | None = None  # torch.cuda.max_memory_allocated, 1 GB = 1e9 bytes
    warmup_s: float | None = None  # compilation and autotuning included
    runs: list[float] = field(default_factory=list)
    skipped: str | None = None


# A render callable: (batch, mode, steps) -> the images, with the pipeline and settings bound.
Render = Callable[[int, Mode, int], list[Image.Image]]


def quality_mode(steps: int) -> Mode:
    """The PhotoMaker V2 preset's render: SDXL's Euler, its classifier-free guidance."""
    guidance = get_preset(QUALITY_PRESET).guidance
    return Mode(
        f"{steps}-step", steps, guidance, lambda: scheduler_for(sdxl_scheduler().config, None)
    )


def fast_mode(steps: int | None) -> Mode:
    """The 4-step fast preset's compute: its scheduler, step count and guidance. Its LoRA is
    fused into the UNet's weights, so random weights cost the same without it."""
    fast = get_preset(FAST_PRESET).fast
    assert fast is not None, f"{FAST_PRESET} is a fast preset"
    steps = steps or fast.steps
    return Mode(
        f"fast {steps}-step",
        steps,
        fast.guidance,
        lambda: scheduler_for(sdxl_scheduler().config, fast),
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 1e9


class Role(StrEnum):
    """What a measured pipeline is in the comparison; it decides how the budget treats it."""

    BASELINE = "baseline"
    FARM = "farm"
    LOW_VRAM = "low-vram"


class Budget:
    """Keeps a whole run within its time: a case is skipped when its timed runs would not end
    before the deadline.

    A case's cost is estimated from the slowest seconds per image-step timed so far. Before
    anything is timed, and for the low-VRAM modes (slower than anything before them), the
    case's own warm-up also counts; the farm's warm-ups do not, as they include compiling.
    Each timed baseline case keeps its time reserved for the farm's run of the same case, so
    that no ratio is lost to a baseline that used up the budget.
    """

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.per_image_step = 0.0
        self.reserved: dict[tuple[str, int], float] = {}

    def allows(
        self, key: tuple[str, int], steps: int, repeats: int, warmup_s: float, role: Role
    ) -> bool:
        self.reserved.pop(key, None)  # the farm's run of this case is due now
        batch = key[1]
        from_warmup = warmup_s / (batch * WARMUP_STEPS)
        per_image_step = self.per_image_step or from_warmup
        if role is Role.LOW_VRAM:
            per_image_step = max(per_image_step, from_warmup)
        cost = per_image_step * batch * steps * repeats * (2 if role is Role.BASELINE else 1)
        return time.monotonic() + cost + sum(self.reserved.values()) <= self.deadline

    def record(self, key: tuple[str, int], seconds: float, steps: int, role: Role) -> None:
        """`seconds` and `steps`: all of the case's timed runs together."""
        self.per_image_step = max(self.per_image_step, seconds / (key[1] * steps))
        if role is Role.BASELINE:
            self.reserved[key] = seconds


def measure(
    path: str,
    role: Role,
    render: Render,
    modes: Sequence[Mode],
    batches: Sequence[int],
    repeats: int,
    device: torch.device,
    budget: Budget,
) -> list[CaseResult]:
    """Every (mode, batch) case of one pipeline: a warm-up, then `repeats` timed renders."""
    results = []
    for mode in modes:
        for batch in batches:
            result = CaseResult(path, mode.name, batch, mode.steps)
            synchronize(device)
            started = time.perf_counter()
            images = render(batch, mode, min(WARMUP_STEPS, mode.steps))
            synchronize(device)
            if len(images) != batch:  # images per second must count images
                raise RuntimeError(f"{path} made {len(images)} images for a batch of {batch}")
            result.warmup_s = time.perf_counter() - started
            key = (mode.name, batch)
            if budget.allows(key, mode.steps, repeats, result.warmup_s, role):
                reset_peak(device)
                for _ in range(repeats):
                    synchronize(device)
                    started = time.perf_counter()
                    render(batch, mode, mode.steps)
                    synchronize(device)
                    result.runs.append(time.perf_counter() - started)
                budget.record(key, sum(result.runs), mode.steps * repeats, role)
                best = min(result.runs)
                result.seconds_per_image = best / batch
                result.images_per_s = batch / best
                result.peak_gb = peak_gb(device)
            else:
                result.skipped = "time budget"
            print(format_row(result), flush=True)
            results.append(result)
    return results


def diffusers_render(stack: SdxlStack, device: torch.device, size: int) -> Render:
    """The baseline: diffusers' SDXL pipeline over the shared modules, as its docs run it."""
    pipe = StableDiffusionXLPipeline(**stack.sdxl_components(), add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    prompt = text_only_prompt(PROMPT, [TRIGGER])

    def render(batch: int, mode: Mode, steps: int) -> list[Image.Image]:
        pipe.scheduler = mode.scheduler()
        return pipe(
            prompt=prompt,
            negative_prompt=NEGATIVE,
            num_images_per_prompt=batch,
            height=size,
            width=size,
            num_inference_steps=steps,
            guidance_scale=mode.guidance,
            generator=torch.Generator(device).manual_seed(0),
        ).images

    return render


def farm_render(pipeline: PhotoMakerPipeline, identity: IdentityTokens, size: int) -> Render:
    """The farm's path: one render per scene and seed, the character's cached ID tokens."""

    def render(batch: int, mode: Mode, steps: int) -> list[Image.Image]:
        pipeline.scheduler = mode.scheduler()
        return pipeline(
            [SceneRender(PROMPT, NEGATIVE, seed) for seed in range(batch)],
            {TRIGGER: identity},
            height=size,
            width=size,
            steps=steps,
            guidance=mode.guidance,
            style_strength=STYLE_STRENGTH,
        ).images

    return render


def random_identity(stack: SdxlStack) -> IdentityTokens:
    """ID tokens of the V2 shape [photos, 2, 2048], as the identity cache serves them."""
    config = stack.id_encoder.config
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(PHOTOS, config.tokens_per_image, config.embed_dim, generator=generator)
    return IdentityTokens(tokens, encoder_fingerprint="bench", photos_fingerprint="bench")


def ratios(results: Sequence[CaseResult]) -> list[dict[str, object]]:
    """farm / diffusers images per second, for every case both measured."""
    baseline = {(r.mode, r.batch): r for r in results if r.path == "diffusers" and r.images_per_s}
    rows = []
    for r in results:
        base = baseline.get((r.mode, r.batch))
        if r.path == "farm" and r.images_per_s and base is not None:
            rows.append(
                {"mode": r.mode, "batch": r.batch, "ratio": r.images_per_s / base.images_per_s}
            )
    return rows


def format_row(r: CaseResult) -> str:
    head = f"{r.path:26} {r.mode:16} {r.batch:>5}"
    if r.skipped:
        return f"{head}  skipped ({r.skipped}); warm-up {r.warmup_s or 0:.1f} s"
    peak = "-" if r.peak_gb is None else f"{r.peak_gb:.2f}"
    return (
        f"{head} {r.seconds_per_image:10.3f} {r.images_per_s:10.3f} {peak:>9}"
        f" {r.warmup_s or 0:9.1f}"
    )


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores, {threads} used by torch)"


def summary(
    args: argparse.Namespace,
    device: torch.device,
    dtype: torch.dtype,
    arch: SdxlArch,
    results: Sequence[CaseResult],
    low_vram: dict[str, float],
    seconds: dict[str, float],
) -> dict[str, object]:
    """The run's figures and settings, and whether the issue's targets were met."""
    speedups = ratios(results)
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "dtype": str(dtype).removeprefix("torch."),
        "arch": arch.name,
        "size": args.size,
        "modes": sorted({r.mode for r in results}),
        "batches": sorted({r.batch for r in results}),
        "repeats": args.repeats,
        "compile": args.compile,
        **seconds,
        # Other work on the machine skews timings (CPU runs, above all): the 1-minute load.
        "load_average": os.getloadavg()[0],
        "cases": [asdict(r) for r in results],
        "ratios_farm_over_diffusers": speedups,
        "targets": {
            "speedup": SPEEDUP_TARGET,
            "speedup_met": bool(speedups) and all(s["ratio"] >= SPEEDUP_TARGET for s in speedups),
            "low_vram_peak_gb": LOW_VRAM_TARGET_GB,
            "low_vram_peak_gb_by_mode": low_vram,
            "low_vram_met": any(peak <= LOW_VRAM_TARGET_GB for peak in low_vram.values()),
        },
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    option = parser.add_argument
    option("--device", default=None, help="default: cuda (cpu with --cpu-smoke)")
    option("--arch", choices=sorted(ARCHS), default=None, help="default: sdxl (small on a CPU)")
    option("--dtype", choices=("auto", "bf16", "fp16", "fp32"), default="auto")
    option("--size", type=int, default=None, help="square side in pixels; default 1024")
    option("--steps", type=int, default=None, help="default 30")
    option("--fast-steps", type=int, default=None, help=f"default {FAST_PRESET}'s")
    option("--batches", default=None, help="comma-separated; default 1,2,4")
    option("--repeats", type=int, default=None, help="timed runs per case, best kept; default 2")
    option(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="torch.compile the farm's UNet (off by default, as FARM_COMPILE is); compiling "
        "is paid in the warm-ups, once per batch size, and printed apart",
    )
    option(
        "--low-vram",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also the farm's offload modes, at batch 1",
    )
    option(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch; default torch's own, 1 with --cpu-smoke (the toy model's "
        "many small ops gain nothing from more, and lose much when a core is busy elsewhere)",
    )
    option("--budget-s", type=float, default=420.0, help="limit for warm-ups and timed runs")
    option(
        "--cpu-smoke",
        action="store_true",
        help="on the CPU at toy widths: 64x64, 3 steps and 2 fast steps, batches 1,2",
    )
    option("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    smoke = args.cpu_smoke
    defaults = {
        "device": "cpu" if smoke else "cuda",
        "arch": "small" if smoke else "sdxl",
        "size": 64 if smoke else 1024,
        "steps": 3 if smoke else 30,
        "fast_steps": 2 if smoke else None,
        "batches": "1,2" if smoke else "1,2,4",
        "repeats": 3 if smoke else 2,
        "threads": 1 if smoke else None,
        "out": ROOT / "bench" / "results" / ("gpu_render_cpu.json" if smoke else "gpu_render.json"),
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Intra-op threads for this run only (the smoke test runs in-process)."""
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    with torch_threads(args.threads):
        return run(args)


def run(args: argparse.Namespace) -> dict[str, object]:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run with --cpu-smoke, or on a GPU machine")
    dtype = {
        "auto": pick_dtype(device),
        "bf16": torch.bfloat16,
        "fp16": torch.float16,
        "fp32": torch.float32,
    }[args.dtype]
    batches = [int(b) for b in args.batches.split(",")]
    modes = [quality_mode(args.steps), fast_mode(args.fast_steps)]
    arch = ARCHS[args.arch]
    started = time.perf_counter()

    # 1. The stack, on the device, in the bench dtype.
    stack = build_stack(arch, device, dtype)
    synchronize(device)
    build_s = time.perf_counter() - started
    identity = random_identity(stack)
    print(
        f"{arch.name} on {device_name(device)}, {dtype}, {args.size}x{args.size}; "
        f"built in {build_s:.1f} s",
        flush=True,
    )
    print(
        f"{'path':26} {'mode':16} {'batch':>5} {'s/image':>10} {'images/s':>10} "
        f"{'peak GB':>9} {'warm-up s':>9}",
        flush=True,
    )
    budget = Budget(args.budget_s)

    # 2. The baseline, before the farm's acceleration touches the shared modules. It has no
    # use for the ID encoder, which waits on the CPU, outside the baseline's peak memory.
    stack.id_encoder.to("cpu")
    baseline = diffusers_render(stack, device, args.size)
    results = measure(
        "diffusers", Role.BASELINE, baseline, modes, batches, args.repeats, device, budget
    )

    # 3. The farm's path, set up the way its loader sets up a worker's pipeline.
    stack.id_encoder.to(device)
    decode_dtype = vae_dtype(dtype, stack.vae.config.force_upcast)
    if stack.vae.dtype != decode_dtype:
        stack.vae.to(decode_dtype)
    pipeline = PhotoMakerPipeline(**vars(stack), device=device)
    accelerate_started = time.perf_counter()
    accelerate(pipeline, compile_unet=args.compile)
    accelerate_s = time.perf_counter() - accelerate_started
    farm = farm_render(pipeline, identity, args.size)
    results += measure("farm", Role.FARM, farm, modes, batches, args.repeats, device, budget)
    compile_s = accelerate_s + sum(r.warmup_s or 0 for r in results if r.path == "farm")

    # 4. The low-VRAM modes, last: they move the modules off the GPU. (On a CPU they save
    # nothing, but run all the same, so that the smoke check covers their code.)
    low_vram: dict[str, float] = {}
    for vram_mode in LOW_VRAM_MODES if args.low_vram else ():
        apply_vram_mode(pipeline, vram_mode)
        path = f"farm {vram_mode.value}"
        cases = measure(path, Role.LOW_VRAM, farm, modes, [1], args.repeats, device, budget)
        peaks = [r.peak_gb for r in cases if r.peak_gb is not None]
        if peaks:
            low_vram[vram_mode.value] = max(peaks)
        results += cases

    seconds = {
        "build_s": build_s,
        "farm_accelerate_and_warmup_s": compile_s,
        "total_s": time.perf_counter() - started,
    }
    figures = summary(args, device, dtype, arch, results, low_vram, seconds)
    for s in ratios(results):
        print(f"farm/diffusers  {s['mode']:16} batch {s['batch']}: {s['ratio']:.2f}x")
    print(
        f"farm acceleration + warm-ups (compilation included): {compile_s:.1f} s; "
        f"whole run {seconds['total_s']:.1f} s"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"written to {args.out}")
    return figures


if __name__ == "__main__":
    main()
