"""A scene's control as a story states it: which map, of what kind, how strongly.

Apart from `farm.controls` (which reads, judges and stores the maps) because the story spec
(`farm.story`) and the pipeline need the shape of a control and nothing of its handling, and
`farm.controls` in turn reads stories: one module for both would import itself in a circle.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo
from pydantic_core import PydanticCustomError

STORED = "sha256:"
_STORED_REF = re.compile(r"^sha256:[0-9a-f]{64}$")
_DATA_URL = re.compile(r"^data:image/(png|jpeg|webp);base64,", re.IGNORECASE)


class ControlType(StrEnum):
    """What the map shows; each type has its own ControlNet or T2I-Adapter."""

    OPENPOSE = "openpose"
    DEPTH = "depth"
    CANNY = "canny"


def _image_is_file(image: str, info: ValidationInfo, kind: str = "control image") -> str:
    # As a story's photos: a path is checked only when the caller says where paths start.
    source_dir = (info.context or {}).get("source_dir")
    if source_dir is not None and not (is_data_url(image) or is_stored(image)):
        path = Path(source_dir) / image
        if not path.is_file():
            raise PydanticCustomError(
                "image_not_a_file", "{kind} {path} is not a file", {"kind": kind, "path": str(path)}
            )
    return image


def _reference_is_file(image: str, info: ValidationInfo) -> str:
    return _image_is_file(image, info, "reference image")


# An outfit's or a location's reference image (`farm.composition`): named the ways a control
# image is, and stored, judged and kept from `farm gc` by the same machinery (`farm.controls`).
ReferenceImage = Annotated[str, StringConstraints(min_length=1), AfterValidator(_reference_is_file)]


class SceneControl(BaseModel):
    """A scene's pose or framing, given as a map image and how strongly it steers."""

    model_config = ConfigDict(extra="forbid")

    image: Annotated[str, StringConstraints(min_length=1), AfterValidator(_image_is_file)] = Field(
        description="A path relative to the story file, the name of a file uploaded with the "
        "story, a data:image/png;base64 URL, or sha256:<hex> once stored."
    )
    type: ControlType
    scale: float = Field(
        default=1.0,
        ge=0,
        le=2,
        description="controlnet_conditioning_scale: 0 is no control, 1 the model's own strength.",
    )

    def recipe(self) -> dict[str, str | float]:
        """What of it decides pixels, for a render's content hash: the image by its content
        (once stored), the type and the scale."""
        return {
            "image": stored_sha(self.image),
            "type": self.type.value,
            "scale": float(self.scale),
        }


def stored_sha(image: str) -> str:
    """An image by its content, for a content hash (a path or URL, before storing, as it is)."""
    return image.removeprefix(STORED) if is_stored(image) else image


def is_stored(image: str) -> bool:
    return bool(_STORED_REF.match(image))


def is_data_url(image: str) -> bool:
    return bool(_DATA_URL.match(image))
