"""Progress bars for long CLI work (`farm render`, `fetch`, `comic --out`, `models pull`): on
a terminal, a bar; piped or redirected, nothing, so that logs and scripts read only the
command's result. The model libraries draw bars of their own (loading weights, downloads),
which follow the same rule."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def on_terminal() -> bool:
    return sys.stderr.isatty()


def progress(items: Iterable[T], *, total: int | None = None, desc: str, unit: str) -> Iterator[T]:
    """`items`, with a bar on stderr when it is a terminal."""
    from tqdm import tqdm

    yield from tqdm(items, total=total, desc=desc, unit=unit, disable=not on_terminal())


def quiet_library_bars() -> None:
    """Off the terminal, no bars from huggingface_hub, transformers and diffusers. Only for
    commands that load models anyway (it imports diffusers), and before they load them:
    huggingface_hub reads its switch when it is first imported, and transformers follows it."""
    if on_terminal():
        return
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
