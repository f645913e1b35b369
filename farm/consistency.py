"""A story's `consistency` settings: consistent self-attention across its scenes.

The attention itself is in farm/render/consistency.py; this is the part a story file, the API
and the dashboard's form validate, without torch. `strength`, `sample_rate`, `blocks` and
`window` also say how a scene attends to its outfits' and location's reference images, whatever
the mode (farm/render/reference_images.py). Every default is the paper's (StoryDiffusion),
except the number of reference scenes, which is the farm's own idea.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_REFERENCE_SCENES = 4  # rendered as one batch: they attend to each other
BLOCKS = ("down", "mid", "up")

Block = Literal["down", "mid", "up"]
SceneNumber = Annotated[int, Field(ge=1)]  # as people number scenes, and files: from 1


class Consistency(BaseModel):
    """How strongly, where and when each scene's self-attention also looks at other scenes."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["off", "batch", "story"] = Field(
        default="off",
        description="off: every render on its own (today's pixels). batch: the renders of one "
        "batch attend to each other. story: the reference scenes render first; every other "
        "render, on any worker, attends to them.",
    )
    strength: float = Field(
        default=1.0,
        gt=0,
        le=4,
        description="Weight of the other scenes' tokens in the softmax (1: the paper's method; "
        "under 1 weaker, over 1 stronger).",
    )
    sample_rate: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Share of each other scene's tokens a scene attends to (the paper's 0.5).",
    )
    blocks: list[Block] = Field(
        default_factory=lambda: ["up"],
        min_length=1,
        max_length=len(BLOCKS),
        description="UNet blocks whose self-attention is shared: down, mid, up (the paper: up).",
    )
    window: tuple[float, float] = Field(
        default=(0.04, 1.0),
        description="[from, to): the fraction of the denoising steps where it applies; the "
        "paper skips the first two of 50 steps.",
    )
    reference_scenes: (
        Annotated[int, Field(ge=1, le=MAX_REFERENCE_SCENES)]
        | Annotated[list[SceneNumber], Field(min_length=1, max_length=MAX_REFERENCE_SCENES)]
    ) = Field(
        default=2,
        description="story mode: the first N scenes, or a list of scene numbers (from 1, as "
        "render files number them), whose first variant every other render attends to.",
    )

    @field_validator("blocks")
    @classmethod
    def _blocks_are_distinct(cls, blocks: list[str]) -> list[str]:
        if len(set(blocks)) != len(blocks):
            raise ValueError(f"each block once, got {blocks}")
        return blocks

    @field_validator("window")
    @classmethod
    def _window_is_a_range(cls, window: tuple[float, float]) -> tuple[float, float]:
        start, end = window
        if not 0 <= start < end <= 1:
            raise ValueError(
                f"window is [from, to) with 0 <= from < to <= 1 (fractions of the steps), "
                f"got {list(window)}"
            )
        return window

    @field_validator("reference_scenes")
    @classmethod
    def _references_are_distinct(cls, scenes: Any) -> Any:
        if isinstance(scenes, list) and len(set(scenes)) != len(scenes):
            raise ValueError(f"each reference scene once, got {scenes}")
        return scenes

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def applies(self, step: int, steps: int) -> bool:
        """Whether step `step` (from 0) of `steps` is inside the window."""
        start, end = self.window
        return start <= step / steps < end

    def reference_indices(self, scenes: int) -> list[int]:
        """The indices (from 0) of the reference scenes of a story of `scenes` scenes."""
        if isinstance(self.reference_scenes, int):
            return list(range(min(self.reference_scenes, scenes)))
        return sorted(number - 1 for number in self.reference_scenes)

    def problem(self, scenes: int) -> str | None:
        """What is wrong with these settings for a story of `scenes` scenes."""
        if self.mode != "story" or isinstance(self.reference_scenes, int):
            return None
        missing = [number for number in self.reference_scenes if number > scenes]
        if missing:
            return (
                f"reference scene {missing[0]} does not exist: this story has {scenes} scenes, "
                "numbered from 1"
            )
        return None

    def document(self) -> dict[str, Any] | None:
        """What of these settings decides pixels (None when off), for content hashes and for
        the key of stored reference tokens."""
        if not self.enabled:
            return None
        return {
            "mode": self.mode,
            "strength": float(self.strength),
            "sample_rate": float(self.sample_rate),
            "blocks": sorted(self.blocks),
            "window": [float(self.window[0]), float(self.window[1])],
        }
