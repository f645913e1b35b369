"""Panel geometry: where each picture, its border and its caption go on each page.

Pure integer arithmetic on boxes, no pixels drawn, so the rules (panels inside the page, gutters
kept, nothing overlapping, every panel placed once) can be tested on their own and hold at any
page size. Spacing is given as fractions of the page's shorter side, so a page laid out at
150 dpi and at 600 dpi looks the same.

How a picture keeps its aspect depends on the layout:

- `four-panel` and `single` *fit*: the frame is shrunk to the picture's aspect inside its cell,
  so nothing is cropped and the space left over is page white outside the border (a letterbox
  inside a frame would read as a broken panel);
- `rows` *covers*: mixed widths are the point of that layout, so the frame fills its cell and
  the picture is cropped to it (see `pages.py` for where the crop is taken from); only a panel
  alone in its row fits, since covering a whole row would cut a square picture to a strip,
  unless its scene is marked wide: then it spans the row, as its author asked.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from farm.errors import InputError

Layout = Literal["four-panel", "rows", "single"]
LAYOUTS: tuple[Layout, ...] = get_args(Layout)
CaptionPosition = Literal["below", "above"]

# A caption band holds `caption_lines` lines of the largest caption font at this pitch (Noto
# Sans' ascent + descent is 1.36 em).
LINE_HEIGHT = 1.4
# `rows`: how many panels a row gets and how often, how likely a row without a scene marked
# wide gets a wide panel anyway, and the most width units a row holds (a wide panel is 2).
_ROW_COUNTS = (1, 2, 3)
_ROW_COUNT_WEIGHTS = (1, 3, 4)
_WIDE_CHANCE = 0.5
_MAX_ROW_UNITS = 4


@dataclass(frozen=True)
class Box:
    """A rectangle in page pixels: `x`, `y` of its top left corner, `w`, `h` its size."""

    x: int
    y: int
    w: int
    h: int

    @property
    def right(self) -> int:
        return self.x + self.w

    @property
    def bottom(self) -> int:
        return self.y + self.h

    def inset(self, by: int) -> Box:
        return Box(self.x + by, self.y + by, self.w - 2 * by, self.h - 2 * by)


@dataclass(frozen=True)
class PageStyle:
    """How pages look; lengths are fractions of the page's shorter side."""

    margin: float = 0.045
    gutter: float = 0.02
    border: float = 0.004
    captions: CaptionPosition = "below"
    caption_lines: int = 3
    font_size: float = 0.02  # the largest caption font: 12 pt on A4 at any dpi
    rows_per_page: int = 3  # `rows` only

    def __post_init__(self) -> None:
        if self.caption_lines < 1 or self.rows_per_page < 1:
            raise ValueError("caption_lines and rows_per_page must be at least 1")
        if self.captions not in get_args(CaptionPosition):
            raise InputError(f"captions go 'below' or 'above' the panels, not {self.captions!r}")

    def px(self, fraction: float, page: tuple[int, int]) -> int:
        return max(1, round(fraction * min(page)))

    def caption_band(self, page: tuple[int, int]) -> int:
        return round(self.caption_lines * LINE_HEIGHT * self.px(self.font_size, page))


DEFAULT_STYLE = PageStyle()


@dataclass(frozen=True)
class Slot:
    """One panel on a page: `index` into the panels given, its frame (border included), the
    picture inside the border, and the caption's box when the page has captions."""

    index: int
    frame: Box
    image: Box
    caption: Box | None


@dataclass(frozen=True)
class PageLayout:
    width: int
    height: int
    slots: tuple[Slot, ...]


def plan_pages(
    aspects: Sequence[float],
    layout: Layout,
    page: tuple[int, int],
    *,
    style: PageStyle = DEFAULT_STYLE,
    captions: bool = True,
    wide: Sequence[bool] = (),
    seed: int = 0,
) -> list[PageLayout]:
    """Lay out panels whose pictures have `aspects` (width / height), in order.

    `wide[i]` asks for panel i to be a wide one in `rows` (the other layouts ignore it);
    `seed` makes the `rows` patterns reproducible. Without `captions` no band is reserved.
    """
    if layout not in LAYOUTS:
        raise InputError(f"unknown comic layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")
    if any(a <= 0 for a in aspects):
        raise ValueError("every picture needs a positive width and height")
    if wide and len(wide) != len(aspects):
        raise ValueError(f"{len(wide)} wide flags for {len(aspects)} panels")
    inner = Box(0, 0, *page).inset(style.px(style.margin, page))
    gutter = style.px(style.gutter, page)
    band = style.caption_band(page) if captions else 0
    gap = gutter // 2 if captions else 0

    def slot(index: int, cell: Box, fit: bool) -> Slot:
        aspect = aspects[index]
        return _slot(index, cell, aspect, fit=fit, band=band, gap=gap, page=page, style=style)

    n = len(aspects)
    if layout == "single":
        return [PageLayout(*page, (slot(i, inner, True),)) for i in range(n)]
    if layout == "four-panel":
        return _four_panel_pages(n, inner, page, gutter, band + gap, slot)
    rows = _row_weights(list(wide) or [False] * n, random.Random(seed))
    return _rows_pages(rows, inner, page, style, slot)


def _four_panel_pages(
    n: int,
    inner: Box,
    page: tuple[int, int],
    gutter: int,
    caption_room: int,
    slot: Callable[[int, Box, bool], Slot],
) -> list[PageLayout]:
    """2 x 2 cells just big enough for the comic's largest fitted panel, the grid centred: the
    panels stay together instead of drifting apart in A4's tall cells, and every page, the
    last one too, has the same grid."""
    if not n:
        return []
    largest_cell = _grid(inner, 2, 2, gutter)[0]
    fitted = [slot(i, largest_cell, True).frame for i in range(n)]
    w = max(frame.w for frame in fitted)
    h = max(frame.h for frame in fitted) + caption_room
    grid = Box(
        inner.x + (inner.w - 2 * w - gutter) // 2,
        inner.y + (inner.h - 2 * h - gutter) // 2,
        2 * w + gutter,
        2 * h + gutter,
    )
    cells = _grid(grid, 2, 2, gutter)
    return [
        PageLayout(
            *page, tuple(slot(i, cells[i % 4], True) for i in range(first, min(first + 4, n)))
        )
        for first in range(0, n, 4)
    ]


def _rows_pages(
    rows: list[list[int]],
    inner: Box,
    page: tuple[int, int],
    style: PageStyle,
    slot: Callable[[int, Box, bool], Slot],
) -> list[PageLayout]:
    """`rows_per_page` rows of equal height per page; a last page with fewer keeps that height."""
    gutter = style.px(style.gutter, page)
    heights = _split(inner.y, inner.h, [1] * style.rows_per_page, gutter)
    pages: list[PageLayout] = []
    first = 0
    for start in range(0, len(rows), style.rows_per_page):
        slots = []
        page_rows = rows[start : start + style.rows_per_page]
        for (y, h), weights in zip(heights[: len(page_rows)], page_rows, strict=True):
            for k, (x, w) in enumerate(_split(inner.x, inner.w, weights, gutter)):
                slots.append(slot(first + k, Box(x, y, w, h), weights == [1]))
            first += len(weights)
        pages.append(PageLayout(*page, tuple(slots)))
    return pages


def _row_weights(wide: list[bool], rng: random.Random) -> list[list[int]]:
    """Rows of 1-3 panels as width weights, e.g. [1, 1, 2]: a scene marked wide gets a 2, and
    a row without one gets one by chance (StoryDiffusion's mixed rows)."""
    rows: list[list[int]] = []
    i = 0
    while i < len(wide):
        count = min(rng.choices(_ROW_COUNTS, _ROW_COUNT_WEIGHTS)[0], len(wide) - i)
        weights = [2 if wide[i + k] else 1 for k in range(count)]
        while sum(weights) > _MAX_ROW_UNITS:
            weights.pop()
        if len(weights) > 1 and 2 not in weights and rng.random() < _WIDE_CHANCE:
            weights[rng.randrange(len(weights))] = 2
        rows.append(weights)
        i += len(weights)
    return rows


def _grid(area: Box, cols: int, rows: int, gutter: int) -> list[Box]:
    """Cells left to right, then top to bottom (reading order)."""
    xs = _split(area.x, area.w, [1] * cols, gutter)
    ys = _split(area.y, area.h, [1] * rows, gutter)
    return [Box(x, y, w, h) for y, h in ys for x, w in xs]


def _split(start: int, length: int, weights: Sequence[int], gutter: int) -> list[tuple[int, int]]:
    """(position, size) of parts of `length` in proportion to `weights`, `gutter` apart.

    Edges come from cumulative weights, so the parts and gutters add up to `length` exactly.
    """
    room = length - gutter * (len(weights) - 1)
    total = sum(weights)
    parts = []
    done = 0
    for i, weight in enumerate(weights):
        left = start + room * done // total + i * gutter
        done += weight
        parts.append((left, start + room * done // total + i * gutter - left))
    return parts


def _slot(
    index: int,
    cell: Box,
    aspect: float,
    *,
    fit: bool,
    band: int,
    gap: int,
    page: tuple[int, int],
    style: PageStyle,
) -> Slot:
    border = style.px(style.border, page)
    frame_w, frame_h = cell.w, cell.h - band - gap
    if min(frame_w, frame_h) <= 2 * border:
        raise InputError(
            f"a {page[0]}x{page[1]} px page leaves no room for pictures with these margins, "
            "gutters and captions; use a larger page or smaller spacing"
        )
    if fit:
        inner_w = min(frame_w - 2 * border, max(1, round((frame_h - 2 * border) * aspect)))
        inner_h = min(frame_h - 2 * border, max(1, round(inner_w / aspect)))
        frame_w, frame_h = inner_w + 2 * border, inner_h + 2 * border
    # The frame and its caption travel together, centred in the cell.
    x = cell.x + (cell.w - frame_w) // 2
    top = cell.y + (cell.h - (frame_h + gap + band)) // 2
    frame_y = top + band + gap if style.captions == "above" else top
    frame = Box(x, frame_y, frame_w, frame_h)
    caption = None
    if band:
        caption_y = top if style.captions == "above" else frame.bottom + gap
        caption = Box(x, caption_y, frame_w, band)
    return Slot(index, frame, frame.inset(border), caption)
