"""What the per-render cost benchmarks (`bench/consistency.py`, `bench/control.py`) share: the
tiny preset's options, and one results file holding the tiny figures beside the SDXL ones
computed from the architecture (no GPU is needed to count parameters or bytes)."""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def tiny_parser(description: str, out: Path) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--renders", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=out)
    return parser


def run(
    args: argparse.Namespace,
    tiny_figures: Callable[[argparse.Namespace, Path], dict[str, Any]],
    sdxl: dict[str, Any],
) -> None:
    """Measure on the tiny preset (built in a scratch folder unless `--models-dir`), then
    print and write the figures."""
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        tiny = tiny_figures(args, args.models_dir or Path(scratch))
    results = {
        "machine": {"cpu_threads": args.threads, "python": platform.python_version()},
        "tiny": tiny,
        "sdxl (computed)": sdxl,
    }
    print(json.dumps(results, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
