"""Style templates and aspect-ratio presets of the reference PhotoMaker demo.

The texts are copied verbatim from TencentARC/PhotoMaker (`gradio_demo/style_template.py` and
`gradio_demo/aspect_ratio_template.py`) because the published results, and our comparisons with
them, depend on the exact words the text encoders see: a "tidied" template is a different prompt.
They are part of the story spec (a story names its style and aspect; the dashboard lists them),
so they live beside `farm/story.py`, not in the GPU package.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

from farm.errors import InputError

DEFAULT_STYLE = "Photographic (Default)"

DEFAULT_NEGATIVE_PROMPT = (
    "nsfw, lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer "
    "digits, cropped, worst quality, low quality, normal quality, jpeg artifacts, signature, "
    "watermark, username, blurry"
)

# name -> (positive template with "{prompt}", negative). Strings are split only to fit the line
# length; "Fantasy art" really has two spaces before "{prompt}".
STYLES: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "(No style)": ("{prompt}", ""),
        "Cinematic": (
            "cinematic still {prompt} . emotional, harmonious, vignette, highly detailed, high "
            "budget, bokeh, cinemascope, moody, epic, gorgeous, film grain, grainy",
            "anime, cartoon, graphic, text, painting, crayon, graphite, abstract, glitch, "
            "deformed, mutated, ugly, disfigured",
        ),
        "Disney Character": (
            "A Pixar animation character of {prompt} . pixar-style, studio anime, Disney, "
            "high-quality",
            "lowres, bad anatomy, bad hands, text, bad eyes, bad arms, bad legs, error, missing "
            "fingers, extra digit, fewer digits, cropped, worst quality, low quality, normal "
            "quality, jpeg artifacts, signature, watermark, blurry, grayscale, noisy, sloppy, "
            "messy, grainy, highly detailed, ultra textured, photo",
        ),
        "Digital Art": (
            "concept art {prompt} . digital artwork, illustrative, painterly, matte painting, "
            "highly detailed",
            "photo, photorealistic, realism, ugly",
        ),
        "Photographic (Default)": (
            "cinematic photo {prompt} . 35mm photograph, film, bokeh, professional, 4k, highly "
            "detailed",
            "drawing, painting, crayon, sketch, graphite, impressionist, noisy, blurry, soft, "
            "deformed, ugly",
        ),
        "Fantasy art": (
            "ethereal fantasy concept art of  {prompt} . magnificent, celestial, ethereal, "
            "painterly, epic, majestic, magical, fantasy art, cover art, dreamy",
            "photographic, realistic, realism, 35mm film, dslr, cropped, frame, text, deformed, "
            "glitch, noise, noisy, off-center, deformed, cross-eyed, closed eyes, bad anatomy, "
            "ugly, disfigured, sloppy, duplicate, mutated, black and white",
        ),
        "Neonpunk": (
            "neonpunk style {prompt} . cyberpunk, vaporwave, neon, vibes, vibrant, stunningly "
            "beautiful, crisp, detailed, sleek, ultramodern, magenta highlights, dark purple "
            "shadows, high contrast, cinematic, ultra detailed, intricate, professional",
            "painting, drawing, illustration, glitch, deformed, mutated, cross-eyed, ugly, "
            "disfigured",
        ),
        "Enhance": (
            "breathtaking {prompt} . award-winning, professional, highly detailed",
            "ugly, deformed, noisy, blurry, distorted, grainy",
        ),
        "Comic book": (
            "comic {prompt} . graphic illustration, comic art, graphic novel art, vibrant, highly "
            "detailed",
            "photograph, deformed, glitch, noisy, realistic, stock photo",
        ),
        "Lowpoly": (
            "low-poly style {prompt} . low-poly game art, polygon mesh, jagged, blocky, wireframe "
            "edges, centered composition",
            "noisy, sloppy, messy, grainy, highly detailed, ultra textured, photo",
        ),
        "Line art": (
            "line art drawing {prompt} . professional, sleek, modern, minimalist, graphic, line "
            "art, vector graphics",
            "anime, photorealistic, 35mm film, deformed, glitch, blurry, noisy, off-center, "
            "deformed, cross-eyed, closed eyes, bad anatomy, ugly, disfigured, mutated, realism, "
            "realistic, impressionism, expressionism, oil, acrylic",
        ),
    }
)

# The reference spells it "Disney Charactor"; accept that so its example settings paste as-is.
_STYLE_ALIASES = {"Disney Charactor": "Disney Character"}

# name -> (width, height). Multiples of 8 near the named ratio, as SDXL needs.
ASPECT_RATIOS: Mapping[str, tuple[int, int]] = MappingProxyType(
    {
        "Instagram (1:1)": (1024, 1024),
        "35mm film / Landscape (3:2)": (1024, 680),
        "35mm film / Portrait (2:3)": (680, 1024),
        "CRT Monitor / Landscape (4:3)": (1024, 768),
        "CRT Monitor / Portrait (3:4)": (768, 1024),
        "Widescreen TV / Landscape (16:9)": (1024, 576),
        "Widescreen TV / Portrait (9:16)": (576, 1024),
        "Widescreen Monitor / Landscape (16:10)": (1024, 640),
        "Widescreen Monitor / Portrait (10:16)": (640, 1024),
        "Cinemascope (2.39:1)": (1024, 424),
        "Widescreen Movie (1.85:1)": (1024, 552),
        "Academy Movie (1.37:1)": (1024, 744),
        "Sheet-print (A-series) / Landscape (297:210)": (1024, 720),
        "Sheet-print (A-series) / Portrait (210:297)": (720, 1024),
    }
)


def _slug(text: str) -> str:
    """Reduce a name to lowercase words joined by '-', so spelling variants of it compare equal."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _without_brackets(name: str) -> str:
    return re.sub(r"\([^)]*\)", "", name)


def _style_lookup() -> dict[str, str]:
    # "Photographic (Default)" answers to "photographic-default" and, shorter, "photographic";
    # "(No style)" only to "no-style", since dropping its brackets leaves nothing.
    lookup: dict[str, str] = {}
    for name in [*STYLES, *_STYLE_ALIASES]:
        canonical = _STYLE_ALIASES.get(name, name)
        for key in (_slug(name), _slug(_without_brackets(name))):
            if key:
                lookup.setdefault(key, canonical)
    return lookup


def _ratio(aspect_name: str) -> str:
    """The ratio in an aspect preset's last brackets: "3:2" of "35mm film / Landscape (3:2)"."""
    return aspect_name[aspect_name.rindex("(") + 1 : aspect_name.rindex(")")]


def _aspect_lookup() -> dict[str, str]:
    lookup: dict[str, str] = {}
    for name in ASPECT_RATIOS:
        lookup[_slug(name)] = name
        lookup[_slug(_ratio(name))] = name
    return lookup


_STYLE_LOOKUP = _style_lookup()
_ASPECT_LOOKUP = _aspect_lookup()


def canonical_style(name: str) -> str:
    """The reference's name for a style given loosely (any case, or a slug like 'comic-book')."""
    canonical = _STYLE_LOOKUP.get(_slug(name))
    if canonical is None:
        raise InputError(f"unknown style {name!r}; choose one of: {', '.join(STYLES)}")
    return canonical


def apply_style(style: str, prompt: str, negative: str) -> tuple[str, str]:
    """Wrap a prompt in a style's template and prepend the style's negative to the user's.

    The negative is joined with a single space even when one side is empty, exactly as the
    reference does, so that the same inputs give the same token sequence as the demo.
    """
    positive_template, style_negative = STYLES[canonical_style(style)]
    return positive_template.replace("{prompt}", prompt), style_negative + " " + negative


def canonical_aspect(name: str) -> str:
    """The reference's name for an aspect preset given by name (any case) or by ratio ('3:2')."""
    canonical = _ASPECT_LOOKUP.get(_slug(name))
    if canonical is None:
        ratios = ", ".join(_ratio(known) for known in ASPECT_RATIOS)
        raise InputError(f"unknown aspect {name!r}; give a ratio ({ratios}) or a full preset name")
    return canonical


def resolve_size(
    aspect: str | None,
    width: int | None,
    height: int | None,
    default: tuple[int, int] = (1024, 1024),
) -> tuple[int, int]:
    """Width and height of a render, from an aspect preset or explicit sides.

    An aspect together with a side is refused rather than one silently winning; a missing side
    falls back to the default's, as diffusers' pipelines do.
    """
    if aspect is not None:
        if width is not None or height is not None:
            raise InputError(
                f"an aspect cannot be combined with width/height (width={width}, "
                f"height={height}); give one or the other"
            )
        return ASPECT_RATIOS[canonical_aspect(aspect)]
    return (default[0] if width is None else width, default[1] if height is None else height)
