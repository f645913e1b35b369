"""Captions: a packaged font, word wrap, shrinking to fit, an ellipsis when even that fails."""

from __future__ import annotations

import pytest
from PIL import Image, ImageChops, ImageDraw

from farm.comic.captions import (
    ELLIPSIS,
    caption_font,
    draw_caption,
    fit_caption,
    font_path,
    wrap,
)
from farm.comic.layout import Box

LONG = (
    "She cycles through the rain to the observatory, late again, and the guard waves her in "
    "with a sigh that says he has seen this every morning for a decade and will see it for "
    "another, while the telescope waits under its dome for the night."
)


def ink(image: Image.Image) -> tuple[int, int, int, int] | None:
    """The bounding box of everything that is not white."""
    return ImageChops.invert(image.convert("L")).getbbox()


def test_the_font_ships_with_a_package_not_the_system():
    path = font_path()
    assert path.is_file() and "site-packages" in path.parts
    assert caption_font(20).getname() == ("Noto Sans", "Regular")


def test_wrap_keeps_every_word_in_order_within_the_width():
    font = caption_font(20)
    lines = wrap(LONG, font, 200)
    assert len(lines) > 3
    assert " ".join(lines).split() == LONG.split()
    assert all(font.getlength(line) <= 200 for line in lines)


def test_wrap_breaks_a_word_wider_than_the_line_and_keeps_line_breaks():
    font = caption_font(20)
    lines = wrap("see https://example.org/a/very/long/path/to/somewhere\nThe end.", font, 120)
    assert (
        "".join(lines[:-1]).replace(" ", "")
        == "seehttps://example.org/a/very/long/path/to/somewhere"
    )
    assert lines[-1] == "The end."
    assert all(font.getlength(line) <= 120 for line in lines)


def test_a_short_caption_keeps_the_largest_size():
    fitted = fit_caption("Night falls.", 300, 80, max_size=24, min_size=12)
    assert fitted.size == 24 and fitted.lines == ("Night falls.",) and not fitted.truncated


def test_a_long_caption_shrinks_until_it_fits():
    fitted = fit_caption(LONG, 300, 90, max_size=24, min_size=8)
    font = caption_font(fitted.size)
    assert 8 <= fitted.size < 24 and not fitted.truncated
    assert len(fitted.lines) * fitted.pitch <= 90
    assert all(font.getlength(line) <= 300 for line in fitted.lines)
    assert " ".join(fitted.lines).split() == LONG.split()


def test_too_long_at_the_smallest_size_is_cut_with_an_ellipsis():
    fitted = fit_caption(LONG * 3, 200, 40, max_size=20, min_size=12)
    font = caption_font(12)
    assert fitted.truncated and fitted.size == 12
    assert fitted.lines and fitted.lines[-1].endswith(ELLIPSIS)
    assert len(fitted.lines) * fitted.pitch <= 40
    assert all(font.getlength(line) <= 200 for line in fitted.lines)


@pytest.mark.parametrize("valign", ["top", "bottom"])
def test_drawn_caption_stays_inside_its_box(valign):
    image = Image.new("RGB", (400, 200), "white")
    box = Box(50, 60, 300, 70)
    fitted = draw_caption(ImageDraw.Draw(image), LONG, box, max_size=28, min_size=9, valign=valign)
    assert fitted.size < 28
    left, top, right, bottom = ink(image)
    assert box.x <= left and right <= box.right and box.y <= top and bottom <= box.bottom
    # Set against the side the picture is on.
    if valign == "top":
        assert top - box.y < box.bottom - bottom
    else:
        assert top - box.y > box.bottom - bottom


def test_unicode_captions_render_real_glyphs():
    font = caption_font(30)
    missing = font.getmask("\uffff")  # a noncharacter: the font's "no glyph" box
    for char in "ëçñßøЖжΩλếệ«»—…":
        mask = font.getmask(char)
        assert (mask.size, bytes(mask)) != (missing.size, bytes(missing)), char
    image = Image.new("RGB", (500, 120), "white")
    text = "Zoë — «Привет», Ελλάδα, Tiếng Việt"
    draw_caption(ImageDraw.Draw(image), text, Box(0, 0, 500, 120), max_size=30, min_size=10)
    assert ink(image) is not None
