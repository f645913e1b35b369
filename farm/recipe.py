"""A render's recipe: the settings that, with its prompt and seed, decide its pixels; the one
rule that names its files; and how the recipe travels inside the PNG.

Light on purpose (no torch): the control plane (the API, `farm submit`, the finisher's upload
thread) names, records and describes renders without loading a model.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from farm import __version__
from farm.render.presets import PRESETS
from farm.story import PlannedRender, Story


def render_stem(scene_index: int, variant: int) -> str:
    """The one naming rule for a render's files (`0003-v1`: scene 3, as people number scenes,
    from 1), locally, in object storage, in downloads and exports; each caller adds its own
    extension."""
    return f"{scene_index + 1:04d}-v{variant}"


def render_filename(scene_index: int, variant: int) -> str:
    return f"{render_stem(scene_index, variant)}.png"


@dataclass(frozen=True)
class RenderSettings:
    """What, besides the prompt and seed, decides a render's pixels: one value, passed whole
    from the story to the pipeline (`LoadedPreset.render`) and into every PNG."""

    preset: str
    width: int
    height: int
    steps: int
    guidance: float
    style: str
    style_strength: float

    @classmethod
    def of(cls, story: Story) -> RenderSettings:
        """The story's settings, except where its preset fixes them (a fast preset's steps
        and guidance): these are what the renders use and what their PNGs record."""
        width, height = story.render_size()
        steps, guidance = story.steps, story.guidance
        preset = PRESETS.get(story.preset)
        if preset is not None:
            steps, guidance = preset.sampling(steps, guidance)
        return cls(
            story.preset,
            width,
            height,
            steps,
            guidance,
            story.style,
            story.style_strength,
        )


def png_bytes(image: Image.Image, planned: PlannedRender, settings: RenderSettings) -> bytes:
    """The PNG with its recipe embedded, so a file alone says how to make it again."""
    info = PngInfo()
    recipe = {
        "prompt": planned.prompt,
        "negative_prompt": planned.negative,
        "seed": planned.seed,
        "scene": planned.scene_index,
        "variant": planned.variant,
        **asdict(settings),
        "software": f"render-farm {__version__}",
    }
    if planned.control is not None:  # the map by its content: what steered the pose
        recipe["control"] = planned.control.recipe()
    info.add_text("parameters", json.dumps(recipe, ensure_ascii=False))
    info.add_text("Software", recipe["software"])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()
