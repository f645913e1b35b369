"""Pages as images: paper sizes, pictures in their frames, captions in their boxes."""

from __future__ import annotations

import pytest
from PIL import Image, ImageChops

from farm.comic.layout import PageStyle, plan_pages
from farm.comic.pages import PageSize, Panel, build_pages
from farm.errors import InputError

COLOURS = [(200, 40, 40), (40, 160, 60), (40, 60, 200), (220, 180, 30), (150, 40, 160)]


def picture(colour: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> Image.Image:
    return Image.new("RGB", size, colour)


def test_paper_sizes_at_a_dpi_and_pixel_sizes():
    assert PageSize.parse("A4", 300) == PageSize(2480, 3508, 300)
    assert PageSize.parse("letter", 300) == PageSize(2550, 3300, 300)
    assert PageSize.parse("a4", 72) == PageSize(595, 842, 72)
    assert PageSize.parse("1200x1600", 150) == PageSize(1200, 1600, 150)
    assert PageSize.from_inches(6.625, 10.25, 200) == PageSize(1325, 2050, 200)  # US comic


@pytest.mark.parametrize("spec", ["A3", "12x", "x12", "-5x100", "10x10", "99999x100", ""])
def test_bad_page_sizes_are_refused(spec):
    with pytest.raises(InputError, match="page size"):
        PageSize.parse(spec)


def test_bad_dpi_is_refused():
    with pytest.raises(InputError, match="dpi"):
        PageSize.parse("A4", 5000)


@pytest.mark.parametrize("layout", ["four-panel", "rows", "single"])
def test_pictures_fill_their_frames_on_white_pages(layout):
    page = PageSize.parse("A4", 50)
    panels = [Panel(picture(c), f"Scene {i}: a caption.") for i, c in enumerate(COLOURS)]
    pages = build_pages(panels, layout, page, seed=1)
    plans = plan_pages([1.0] * 5, layout, (page.width, page.height), seed=1)
    assert len(pages) == len(plans)
    for image, plan in zip(pages, plans, strict=True):
        assert image.mode == "RGB" and image.size == (page.width, page.height)
        assert image.getpixel((0, 0)) == (255, 255, 255)
        for slot in plan.slots:
            frame, inner = slot.frame, slot.image
            assert image.getpixel((frame.x, frame.y)) == (0, 0, 0)  # the border
            centre = (inner.x + inner.w // 2, inner.y + inner.h // 2)
            assert image.getpixel(centre) == COLOURS[slot.index]
            lettered = image.crop(
                (slot.caption.x, slot.caption.y, slot.caption.right, slot.caption.bottom)
            )
            assert ImageChops.invert(lettered.convert("L")).getbbox() is not None


def test_without_captions_the_pictures_get_the_room():
    page = PageSize.parse("A4", 50)

    def picture_area(caption: str | None) -> int:
        panels = [Panel(picture(c), caption) for c in COLOURS[:4]]
        [image] = build_pages(panels, "rows", page, seed=2)
        counts = {colour: n for n, colour in image.getcolors(image.width * image.height)}
        return sum(counts.get(c, 0) for c in COLOURS[:4])

    assert picture_area(None) > picture_area("words")


def test_captions_above_are_drawn_over_the_panels():
    page = PageSize.parse("A4", 50)
    style = PageStyle(captions="above")
    [image] = build_pages(
        [Panel(picture(COLOURS[0]), "Over the top.")], "single", page, style=style
    )
    [plan] = plan_pages([1.0], "single", (page.width, page.height), style=style)
    slot = plan.slots[0]
    above = image.crop((0, 0, page.width, slot.frame.y))
    below = image.crop((0, slot.frame.bottom, page.width, page.height))
    assert ImageChops.invert(above.convert("L")).getbbox() is not None
    assert ImageChops.invert(below.convert("L")).getbbox() is None


def test_other_aspects_and_modes_are_placed_too():
    page = PageSize.parse("A4", 50)
    panels = [
        Panel(picture((10, 200, 10), (96, 64)).convert("P")),
        Panel(Image.new("RGBA", (48, 80), (200, 10, 10, 255))),
    ]
    pages = build_pages(panels, "four-panel", page)
    assert len(pages) == 1 and pages[0].mode == "RGB"
