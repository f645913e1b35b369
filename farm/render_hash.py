"""A render's content hash: one name for "these exact pixels", so that work done once is never
done again.

A studio edits two prompts of a 40-scene story and resubmits: the 38 renders whose recipe did
not change must be found, not rendered again. A render's pixels are decided by its preset and
the model files behind it, the identity tokens of each person in it, the prompt after the style
template, the negative, the size, the steps, the guidance, the style strength, the scheduler,
the seed, the LoRAs, the identity QC that may swap in another seed, and (from issue 16 on)
per-scene control and consistency settings. `render_hash` is a sha256 over exactly those,
written as canonical JSON; two renders with the same hash have the same pixels (on the same
kind of device), so a job may reuse any finished render of its project with the hash it needs.

Not in the hash: the scene's number, its caption and the job. They decide where a picture goes
and what is printed under it, not the picture; a scene that moves keeps its render.

How to add a field without changing any existing hash (and so without making every finished
render look new):

1. Give it a keyword parameter of `render_hash` (or a key of `extra`) whose default means "as
   before", written as None (or an empty list or mapping).
2. Put it in the document only when it is not that default: `_document` drops every None,
   empty list and empty mapping, at any depth, so a story that does not use the field hashes
   exactly as it did before the field existed.
3. Never rename or reorder what is there, and never change how a value is written (floats are
   written as floats, so guidance 5 and 5.0 are one value).

Per-scene control (a pose image, a ControlNet and its weight, an outfit, a consistency setting)
goes under `extra`, one key per feature (`{"controlnet": {...}, "outfit": {...}}`), each with
everything about it that decides pixels, content hashes for images rather than their keys.
A change that alters pixels for every render (a new tiny build, a new noise rule) changes
`model_files` or gets its own non-default value: it must change the hash, or a stale picture
would be reused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from farm.render.presets import Preset
from farm.render.tiny_build import TINY_BUILD

HASH_VERSION = 1  # bumped only if the document's existing parts ever had to change meaning
DEFAULT_SCHEDULER = "default"  # the base model's own scheduler, as its folder configures it
_PLAIN = (str, int, float)  # bool is an int


@dataclass(frozen=True)
class Lora:
    """A LoRA fused into the UNet: which file, and how strongly."""

    name: str  # repo/file, or a content hash for an uploaded one
    weight: float = 1.0


@dataclass(frozen=True)
class Person:
    """One character of a render as its pixels see it: its class word and trigger place it in
    the prompt, `identity` names its identity tokens apart from the encoder's weights (those
    are in `model_files`)."""

    trigger: str
    class_word: str
    identity: str


def photos_identity(photo_sha256s: Sequence[str], crop: bool) -> str:
    """The identity-token key of a person apart from the encoder: the photos' content hashes
    in order, and whether the CLIP branch sees them cropped. Computable from SQL alone (the
    character's photo rows), so the API hashes a job without loading a model."""
    document = {"photos": list(photo_sha256s), "crop": crop}
    return _sha256(document)


def model_files(preset: Preset, sdxl_base: str | None = None) -> str:
    """A fingerprint of the model files behind `preset`: the SDXL base (or the farm's
    `FARM_SDXL_BASE` in its place), the PhotoMaker checkpoint, the face model that scores QC
    and the few-step LoRA, by the names they are fetched by, and for the tiny presets the build
    that made their weights. Files are named, not read: the control plane hashes jobs without
    the weights, and a model that changes under the same name must get a new name (as the tiny
    build does with its number)."""
    document: dict[str, Any] = {
        "photomaker": [preset.version, preset.checkpoint_repo, preset.checkpoint_file],
        "base": (sdxl_base or preset.base_model) if not preset.tiny else f"tiny:{TINY_BUILD}",
        "faces": preset.face_model,
    }
    return _sha256(document)


def render_hash(
    *,
    preset: str,
    model_files: str,
    people: Sequence[Person],
    prompt: str,
    negative: str,
    width: int,
    height: int,
    steps: int,
    guidance: float,
    style_strength: float,
    scheduler: str,
    seed: int | None,
    loras: Sequence[Lora] = (),
    qc: Mapping[str, Any] | None = None,
    noise: str | None = None,
    prompt_truncation: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """The sha256 (hex) of everything that decides a render's pixels.

    `prompt` and `negative` are the texts the pipeline encodes, after the style template.
    `qc` is the identity check that may keep another seed's image (None when off); `noise`
    and `prompt_truncation` are the farm's settings, None at their defaults; `extra` is where
    per-scene control and consistency settings go (see the module's docstring). A `seed` of
    None hashes the recipe shared by all of a scene's variants.
    """
    document = {
        "v": HASH_VERSION,
        "preset": preset,
        "model_files": model_files,
        "people": [
            {"trigger": p.trigger, "class_word": p.class_word, "identity": p.identity}
            for p in sorted(people, key=lambda p: p.trigger)
        ],
        "prompt": prompt,
        "negative": negative,
        "size": [int(width), int(height)],
        "steps": int(steps),
        "guidance": float(guidance),
        "style_strength": float(style_strength),
        "scheduler": scheduler,
        "seed": None if seed is None else int(seed),
        "loras": [{"name": lora.name, "weight": float(lora.weight)} for lora in loras],
        "qc": qc,
        "noise": noise,
        "prompt_truncation": prompt_truncation,
        "extra": extra,
    }
    return _sha256(document)


def _document(value: Any) -> Any:
    """`value` without its defaults (None, empty lists and mappings), at any depth. Plain
    values are kept without a call of their own: a 10,000-scene submit hashes 20,000 recipes."""
    if isinstance(value, Mapping):
        kept = {}
        for key, item in value.items():
            if not isinstance(item, _PLAIN):
                item = _document(item)
            if not _is_default(item):
                kept[str(key)] = item
        return kept
    if isinstance(value, list | tuple):
        return [item if isinstance(item, _PLAIN) else _document(item) for item in value]
    return value


def _is_default(value: Any) -> bool:
    return value is None or (isinstance(value, list | dict) and not value)


def _sha256(document: Mapping[str, Any]) -> str:
    text = json.dumps(
        _document(document), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(text.encode()).hexdigest()
