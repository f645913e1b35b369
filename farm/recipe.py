"""A render's recipe: the settings that, with its prompt and seed, decide its pixels; the one
rule that names its files; and how the recipe travels inside the PNG.

Light on purpose (no torch): the control plane (the API, `farm submit`, the finisher's upload
thread) names, records and describes renders without loading a model.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

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


# The PNG text chunk holding the recipe as JSON, for the farm and scripts. `parameters` holds
# it as AUTOMATIC1111 writes it, which image viewers, ComfyUI and civitai-style tools read.
RECIPE_CHUNK = "render-farm"
_SAMPLERS = {"lcm": "LCM", "tcd": "TCD", "euler-trailing": "Euler"}


def a1111_parameters(recipe: dict[str, Any]) -> str:
    """The recipe in AUTOMATIC1111's `parameters` text: the prompt, a `Negative prompt:` line,
    then `Key: value` pairs (the farm's own keys after A1111's)."""
    preset = PRESETS.get(recipe["preset"])
    fast = preset.fast if preset is not None else None
    sampler = _SAMPLERS[fast.scheduler.value] if fast is not None else "Euler"
    schedule = "Schedule type: Trailing, " if sampler == "Euler" and fast is not None else ""
    pairs = (
        f"Steps: {recipe['steps']}, Sampler: {sampler}, {schedule}"
        f"CFG scale: {recipe['guidance']}, Seed: {recipe['seed']}, "
        f"Size: {recipe['width']}x{recipe['height']}, Model: {recipe['preset']}, "
        f"Style: {recipe['style']}, Style strength: {recipe['style_strength']}, "
        f"Scene: {recipe['scene'] + 1}, Variant: {recipe['variant']}, "
        f"Version: {recipe['software']}"
    )
    return f"{recipe['prompt']}\nNegative prompt: {recipe['negative_prompt']}\n{pairs}"


def prompt_in(text: Mapping[str, str]) -> str | None:
    """The prompt a PNG's text chunks carry: the farm's recipe, else A1111's `parameters`
    (the farm's older PNGs held JSON there)."""
    for raw in (text.get(RECIPE_CHUNK), text.get("parameters")):
        if not raw:
            continue
        try:
            recipe = json.loads(raw)
        except json.JSONDecodeError:
            return raw.split("\nNegative prompt:")[0].split("\nSteps: ")[0].strip() or None
        if isinstance(recipe, dict) and isinstance(recipe.get("prompt"), str):
            return recipe["prompt"]
    return None


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
    info.add_text("parameters", a1111_parameters(recipe))
    info.add_text(RECIPE_CHUNK, json.dumps(recipe, ensure_ascii=False))
    info.add_text("Software", recipe["software"])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()
