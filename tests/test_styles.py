"""The reference demo's style templates and aspect presets, and how loosely they may be named."""

import pytest

from farm import styles
from farm.errors import InputError


def test_the_reference_styles_are_all_there_in_order():
    assert list(styles.STYLES) == [
        "(No style)",
        "Cinematic",
        "Disney Character",
        "Digital Art",
        "Photographic (Default)",
        "Fantasy art",
        "Neonpunk",
        "Enhance",
        "Comic book",
        "Lowpoly",
        "Line art",
    ]
    assert styles.DEFAULT_STYLE in styles.STYLES
    for positive, _negative in styles.STYLES.values():
        assert positive.count("{prompt}") == 1


def test_templates_are_the_reference_text_verbatim():
    # Spot checks of the copied text, including the reference's odd spacing.
    assert styles.STYLES["Photographic (Default)"] == (
        "cinematic photo {prompt} . 35mm photograph, film, bokeh, professional, 4k, highly "
        "detailed",
        "drawing, painting, crayon, sketch, graphite, impressionist, noisy, blurry, soft, "
        "deformed, ugly",
    )
    assert styles.STYLES["Fantasy art"][0].startswith("ethereal fantasy concept art of  {prompt} .")
    assert styles.STYLES["(No style)"] == ("{prompt}", "")


def test_default_negative_prompt_is_the_demos():
    assert styles.DEFAULT_NEGATIVE_PROMPT == (
        "nsfw, lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer "
        "digits, cropped, worst quality, low quality, normal quality, jpeg artifacts, signature, "
        "watermark, username, blurry"
    )


def test_apply_style_fills_the_template_and_prepends_the_style_negative():
    prompt, negative = styles.apply_style("Comic book", "a man img flying", "blurry")
    assert prompt == (
        "comic a man img flying . graphic illustration, comic art, graphic novel art, vibrant, "
        "highly detailed"
    )
    assert negative == "photograph, deformed, glitch, noisy, realistic, stock photo blurry"


def test_apply_style_joins_negatives_with_one_space_even_when_empty_like_the_reference():
    assert styles.apply_style("(No style)", "a man img", "blurry") == ("a man img", " blurry")
    assert styles.apply_style("Enhance", "a man img", "")[1] == (
        "ugly, deformed, noisy, blurry, distorted, grainy "
    )


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("Photographic (Default)", "Photographic (Default)"),
        ("photographic", "Photographic (Default)"),
        ("PHOTOGRAPHIC (default)", "Photographic (Default)"),
        ("comic-book", "Comic book"),
        ("Comic_Book", "Comic book"),
        ("no-style", "(No style)"),
        ("(no style)", "(No style)"),
        ("line art", "Line art"),
        ("disney-character", "Disney Character"),
        ("Disney Charactor", "Disney Character"),
    ],
)
def test_style_names_are_matched_loosely_and_returned_canonical(given, canonical):
    assert styles.canonical_style(given) == canonical


def test_unknown_style_lists_the_valid_names():
    with pytest.raises(InputError, match=r"unknown style 'vaporwave'.*Cinematic.*Line art"):
        styles.apply_style("vaporwave", "a man img", "")


def test_aspect_presets_are_the_demos_and_fit_sdxl():
    assert styles.ASPECT_RATIOS["Instagram (1:1)"] == (1024, 1024)
    assert styles.ASPECT_RATIOS["35mm film / Landscape (3:2)"] == (1024, 680)
    assert len(styles.ASPECT_RATIOS) == 14
    for width, height in styles.ASPECT_RATIOS.values():
        assert width % 8 == 0 and height % 8 == 0


@pytest.mark.parametrize(
    ("aspect", "size"),
    [
        ("3:2", (1024, 680)),
        ("16:9", (1024, 576)),
        ("2.39:1", (1024, 424)),
        ("210:297", (720, 1024)),
        ("CRT monitor / portrait (3:4)", (768, 1024)),
    ],
)
def test_resolve_size_from_an_aspect_name_or_ratio(aspect, size):
    assert styles.resolve_size(aspect, None, None) == size


def test_resolve_size_from_sides_falls_back_to_the_default_per_side():
    assert styles.resolve_size(None, None, None) == (1024, 1024)
    assert styles.resolve_size(None, 512, 768) == (512, 768)
    assert styles.resolve_size(None, 512, None, default=(64, 64)) == (512, 64)


def test_resolve_size_refuses_an_aspect_with_a_side():
    with pytest.raises(InputError, match="aspect cannot be combined with width/height"):
        styles.resolve_size("3:2", 512, None)


def test_unknown_aspect_lists_the_ratios():
    with pytest.raises(InputError, match=r"unknown aspect '5:4'.*3:2.*2\.39:1"):
        styles.resolve_size("5:4", None, None)
