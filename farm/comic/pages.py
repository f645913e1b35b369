"""Comic pages as images: pictures in black frames on white, captions under or over them.

Page sizes are pixels, or paper at a print DPI (`PageSize.parse("A4", 300)`); the DPI is kept
with the size because the PDF needs it to print at the paper's real size.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageOps

from farm.comic.captions import draw_caption
from farm.comic.layout import DEFAULT_STYLE, Layout, PageStyle, plan_pages
from farm.errors import InputError

MM_PER_INCH = 25.4
PAPER_INCHES = {
    "a4": (210 / MM_PER_INCH, 297 / MM_PER_INCH),
    "letter": (8.5, 11.0),
}
MIN_DPI, MAX_DPI = 36, 1200
MAX_SIDE_PX = 20_000  # past this a page is a mistake, and Pillow's bomb check would refuse it
# The smallest caption font, as a share of the largest: about 6.5 pt beside 12 pt.
MIN_FONT_SCALE = 0.55
# Where a covering crop is taken from: centred across, a little above the middle down, where
# the character's face sits in most shots.
CROP_CENTRE = (0.5, 0.4)
_PIXELS = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


@dataclass(frozen=True)
class PageSize:
    width: int
    height: int
    dpi: int

    def __post_init__(self) -> None:
        if not (MIN_DPI <= self.dpi <= MAX_DPI):
            raise InputError(
                f"invalid dpi {self.dpi}: use {MIN_DPI} to {MAX_DPI}, e.g. 300 for print"
            )
        if not (64 <= self.width <= MAX_SIDE_PX and 64 <= self.height <= MAX_SIDE_PX):
            raise InputError(
                f"invalid page size {self.width}x{self.height} px: each side must be 64 to "
                f"{MAX_SIDE_PX} px"
            )

    @classmethod
    def from_inches(cls, width_in: float, height_in: float, dpi: int) -> PageSize:
        return cls(round(width_in * dpi), round(height_in * dpi), dpi)

    @classmethod
    def parse(cls, spec: str, dpi: int = 300) -> PageSize:
        """`A4` or `letter` at `dpi`, or `WxH` in pixels (the dpi then only sets print size)."""
        paper = PAPER_INCHES.get(spec.strip().lower())
        if paper is not None:
            return cls.from_inches(*paper, dpi)
        pixels = _PIXELS.match(spec)
        if pixels is None:
            raise InputError(
                f"invalid page size {spec!r}: use {', '.join(PAPER_INCHES)} or WxH in pixels, "
                "e.g. 2480x3508"
            )
        return cls(int(pixels[1]), int(pixels[2]), dpi)


A4_300DPI = PageSize.parse("A4", 300)


@dataclass(frozen=True)
class Panel:
    """One picture with its caption; `wide` asks the `rows` layout for a wide panel."""

    image: Image.Image
    caption: str | None = None
    wide: bool = False


def build_pages(
    panels: Sequence[Panel],
    layout: Layout = "four-panel",
    page: PageSize = A4_300DPI,
    *,
    style: PageStyle = DEFAULT_STYLE,
    seed: int = 0,
) -> list[Image.Image]:
    """The comic's pages, in reading order, as RGB images of `page`'s size.

    A caption band is reserved on every panel when any panel has a caption, so panels of a row
    stay aligned; with no captions at all the pictures get the room. Pages are held in memory
    (an A4 page at 300 dpi is 26 MB), which suits comics of up to a few hundred panels.
    """
    size = (page.width, page.height)
    captions = any(p.caption for p in panels)
    plans = plan_pages(
        [p.image.width / p.image.height for p in panels],
        layout,
        size,
        style=style,
        captions=captions,
        wide=[p.wide for p in panels],
        seed=seed,
    )
    max_font = style.px(style.font_size, size)
    min_font = round(max_font * MIN_FONT_SCALE)
    pages = []
    for plan in plans:
        canvas = Image.new("RGB", size, "white")
        draw = ImageDraw.Draw(canvas)
        for slot in plan.slots:
            panel = panels[slot.index]
            frame = slot.frame
            draw.rectangle((frame.x, frame.y, frame.right - 1, frame.bottom - 1), fill="black")
            picture = ImageOps.fit(
                panel.image.convert("RGB"),
                (slot.image.w, slot.image.h),
                Image.Resampling.LANCZOS,
                centering=CROP_CENTRE,
            )
            canvas.paste(picture, (slot.image.x, slot.image.y))
            if slot.caption is not None and panel.caption:
                draw_caption(
                    draw,
                    panel.caption,
                    slot.caption,
                    max_size=max_font,
                    min_size=min_font,
                    valign="top" if style.captions == "below" else "bottom",
                )
        pages.append(canvas)
    return pages
