"""Captions: word-wrapped to their box, shrunk until they fit, cut with an ellipsis if even the
smallest size does not.

The font is Noto Sans from the `fontpkg-noto-sans` package (OFL), never a system font: a worker
image or a CI machine may have no fonts at all, and the same story must letter the same way on
every machine. Noto Sans covers Latin, Greek, Cyrillic and Vietnamese; other scripts (CJK,
emoji) would show as boxes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import fontpkg
from PIL import ImageDraw, ImageFont

from farm.comic.layout import Box

FONT_FAMILY = "Noto Sans"
ELLIPSIS = "…"
INK = (20, 20, 20)


@functools.cache
def font_path() -> Path:
    return fontpkg.path(FONT_FAMILY)


@functools.lru_cache(maxsize=128)
def caption_font(size: int) -> ImageFont.FreeTypeFont:
    """Cached per size: the shrinking loop asks for the same few sizes for every caption."""
    return ImageFont.truetype(font_path(), size)


def line_height(font: ImageFont.FreeTypeFont) -> int:
    """Ascent + descent: lines this far apart never touch, accents included."""
    ascent, descent = font.getmetrics()
    return ascent + descent


def wrap(text: str, font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Greedy word wrap to `width` pixels; the caption's own line breaks are kept, and a word
    wider than a line (a URL, a long compound) is broken between characters."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            line = ""
            for char in word:
                if line and font.getlength(line + char) > width:
                    lines.append(line)
                    line = ""
                line += char
        lines.append(line)
    return lines


@dataclass(frozen=True)
class FittedCaption:
    """The lines to draw at `size` px, `pitch` px apart; `truncated` when text was cut."""

    lines: tuple[str, ...]
    size: int
    pitch: int
    truncated: bool


def fit_caption(
    text: str, width: int, height: int, *, max_size: int, min_size: int
) -> FittedCaption:
    """The largest size from `max_size` down to `min_size` at which the wrapped text fits in
    `width` x `height`; at `min_size` the lines that fit, the last ending in an ellipsis.

    The size is found by bisection: wrapping is the costly part, and a long caption would
    otherwise be wrapped at every size on the way down.
    """
    max_size = max(1, max_size)
    min_size = max(1, min(min_size, max_size))
    best = None
    low, high = min_size, max_size
    while low <= high:
        size = (low + high) // 2
        font = caption_font(size)
        lines = wrap(text, font, width)
        pitch = line_height(font)
        if len(lines) * pitch <= height:
            best = FittedCaption(tuple(lines), size, pitch, truncated=False)
            low = size + 1
        else:
            high = size - 1
    if best is not None:
        return best
    font = caption_font(min_size)
    pitch = line_height(font)
    keep = wrap(text, font, width)[: height // pitch]
    if keep:
        last = keep[-1]
        while last and font.getlength(last.rstrip() + ELLIPSIS) > width:
            last = last[:-1]
        keep[-1] = last.rstrip() + ELLIPSIS
    return FittedCaption(tuple(keep), min_size, pitch, truncated=True)


def draw_caption(
    draw: ImageDraw.ImageDraw,
    text: str,
    box: Box,
    *,
    max_size: int,
    min_size: int,
    valign: Literal["top", "bottom"] = "top",
) -> FittedCaption:
    """Centre each line in `box`, the block against its top or bottom edge (the side the
    picture is on). A small side padding keeps overhanging glyphs (j, f, italics) inside."""
    pad = max(1, max_size // 8)
    fitted = fit_caption(text, box.w - 2 * pad, box.h, max_size=max_size, min_size=min_size)
    font = caption_font(fitted.size)
    block = len(fitted.lines) * fitted.pitch
    y = box.y if valign == "top" else box.bottom - block
    for line in fitted.lines:
        draw.text((box.x + box.w / 2, y), line, font=font, fill=INK, anchor="ma")
        y += fitted.pitch
    return fitted
