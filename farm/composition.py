"""How a scene's prompt is composed from its parts: the scene's own words, the outfit each
character wears, the location, and the shot type.

The rule is explicit so that a studio can predict every prompt from the story file:

    <scene prompt>, <outfit of the character>, <outfit of each cast member named>,
    <location>, <shot>

each part appended as written, in that order, joined with ", ", and then wrapped by the story's
style template like any prompt. Appended text comes after the trigger word, so it never moves
the identity tokens; like any prompt, text past CLIP's 77 tokens is cut.

An outfit or a location may also be shown by reference images: a scene that wears it, or is
set there, attends to those images' self-attention tokens (`Dressing`, rendered by
`farm.render.reference_images`), on top of its words.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from farm.consistency import Consistency
from farm.control_spec import ReferenceImage, stored_sha

MAX_REFERENCE_IMAGES = 4  # each one is a UNet pass per step in the window, once per story

PromptText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300)]
# Outfit and location names: short, so they read well in a scene line and on the job page.
Name = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=40, pattern=r"^[\w -]+$")
]


ReferenceImages = Annotated[
    list[ReferenceImage], Field(min_length=1, max_length=MAX_REFERENCE_IMAGES)
]


def _absent(images: list[str] | None) -> bool:
    # Left out of the story a job keeps when not given, so stories without images are stored
    # (and compared, and revised) exactly as before.
    return images is None


_IMAGES = (
    "1-4 reference images (paths relative to the story file, files uploaded with it, data: "
    "URLs, or sha256:<hex> once stored) that every scene using it attends to."
)


class Outfit(BaseModel):
    """A named set of clothes, hair and props, written once and worn in many scenes."""

    model_config = ConfigDict(extra="forbid")

    prompt: PromptText  # e.g. "wearing a long red wool coat and a black scarf"
    images: ReferenceImages | None = Field(default=None, description=_IMAGES, exclude_if=_absent)


class Location(BaseModel):
    """A recurring place, described once so that every scene set there says the same."""

    model_config = ConfigDict(extra="forbid")

    prompt: PromptText  # e.g. "in a dim Victorian library with tall oak shelves"
    images: ReferenceImages | None = Field(default=None, description=_IMAGES, exclude_if=_absent)


@dataclass(frozen=True)
class Dressing:
    """An outfit or location with reference images, as one render attends to it: its words
    (the prompt its images are seen with), its images, and the story's consistency settings
    (blocks, window, sample rate, strength), which apply whatever the consistency mode."""

    prompt: str
    images: tuple[str, ...]  # as the story names them; `sha256:<hex>` in a job's story
    settings: Consistency
    # The decoded images, once read (`farm.controls.attach`); not part of what it is.
    pixels: tuple[Image.Image, ...] = field(default=(), compare=False, repr=False)

    def recipe(self) -> dict[str, Any]:
        """What of it decides pixels, for content hashes and the key of its stored tokens."""
        settings = self.settings
        return {
            "prompt": self.prompt,
            "images": [stored_sha(image) for image in self.images],
            "strength": float(settings.strength),
            "sample_rate": float(settings.sample_rate),
            "blocks": sorted(settings.blocks),
            "window": [float(settings.window[0]), float(settings.window[1])],
        }


class Shot(StrEnum):
    """Framing by words: the camera's distance and angle, for scenes without a control image."""

    EXTREME_CLOSE_UP = "extreme-close-up"
    CLOSE_UP = "close-up"
    MEDIUM = "medium"
    FULL_BODY = "full-body"
    WIDE = "wide"
    OVER_THE_SHOULDER = "over-the-shoulder"
    LOW_ANGLE = "low-angle"
    HIGH_ANGLE = "high-angle"
    BIRDS_EYE = "birds-eye"


# The words each shot adds: the phrasing SDXL's captions use for these framings.
SHOT_PROMPTS: dict[Shot, str] = {
    Shot.EXTREME_CLOSE_UP: "extreme close-up shot",
    Shot.CLOSE_UP: "close-up shot",
    Shot.MEDIUM: "medium shot, waist up",
    Shot.FULL_BODY: "full body shot",
    Shot.WIDE: "wide shot, establishing shot",
    Shot.OVER_THE_SHOULDER: "over-the-shoulder shot",
    Shot.LOW_ANGLE: "low-angle shot",
    Shot.HIGH_ANGLE: "high-angle shot",
    Shot.BIRDS_EYE: "bird's-eye view",
}


def compose_prompt(
    prompt: str,
    outfits: Sequence[Outfit] = (),
    location: Location | None = None,
    shot: Shot | None = None,
) -> str:
    """The scene's prompt with its parts appended; a scene that names none keeps its prompt
    exactly, so its renders (seed, pixels, content hash) are those of before."""
    parts = [prompt, *(outfit.prompt for outfit in outfits)]
    if location is not None:
        parts.append(location.prompt)
    if shot is not None:
        parts.append(SHOT_PROMPTS[shot])
    return ", ".join(parts)


def worn_outfits(outfit: str | Mapping[str, str] | None, lead_trigger: str) -> dict[str, str]:
    """A scene's `outfit` as trigger -> outfit name: a plain name is the lead character's."""
    if outfit is None:
        return {}
    if isinstance(outfit, str):
        return {lead_trigger: outfit}
    return dict(outfit)
