"""How a scene's prompt is composed from its parts: the scene's own words, the outfit each
character wears, the location, and the shot type.

The rule is explicit so that a studio can predict every prompt from the story file:

    <scene prompt>, <outfit of the character>, <outfit of each cast member named>,
    <location>, <shot>

each part appended as written, in that order, joined with ", ", and then wrapped by the story's
style template like any prompt. Appended text comes after the trigger word, so it never moves
the identity tokens; like any prompt, text past CLIP's 77 tokens is cut.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

PromptText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300)]
# Outfit and location names: short, so they read well in a scene line and on the job page.
Name = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=40, pattern=r"^[\w -]+$")
]


class Outfit(BaseModel):
    """A named set of clothes, hair and props, written once and worn in many scenes."""

    model_config = ConfigDict(extra="forbid")

    prompt: PromptText  # e.g. "wearing a long red wool coat and a black scarf"


class Location(BaseModel):
    """A recurring place, described once so that every scene set there says the same."""

    model_config = ConfigDict(extra="forbid")

    prompt: PromptText  # e.g. "in a dim Victorian library with tall oak shelves"


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
