"""`farm render --out DIR` into a folder it rendered before: only the changed scenes render.

The folder's manifest names each file with the content hash of its recipe (farm/render_hash.py)
and the sha256 of its bytes. A render whose hash the new story still asks for is kept: left as
it is when its name and place are the same (byte for byte), written again under its new name
when its scene moved (the same pixels, its PNG's recipe saying where it now belongs). Files the
old manifest lists that the new story no longer has are removed; files the farm did not write
are never touched. A file changed by hand since (its sha256 differs) is rendered again.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from farm.identity.photos import Photo
from farm.recipe import RenderSettings, png_bytes, render_filename
from farm.render_hash import Person, photos_identity
from farm.reuse import RecipeHasher
from farm.settings import Settings
from farm.storage.local import LocalStorage
from farm.story import PlannedRender, Story

MANIFEST = "manifest.json"


def story_hasher(story: Story, settings: Settings) -> RecipeHasher:
    """The hasher of a story read from a file: its people from their photo files."""
    people = []
    for character in story.characters:
        photos = [Photo(p.name, p.read_bytes()) for p in story.photo_paths(character)]
        identity = photos_identity([photo.sha256 for photo in photos], character.face_crop)
        people.append(Person(character.trigger, character.class_word, identity))
    return RecipeHasher(story, people, settings)


class FolderReuse:
    """What an output folder already holds, by content hash, and what became of it."""

    def __init__(self, out_dir: Path, hasher: RecipeHasher) -> None:
        self.out_dir = out_dir
        self.hasher = hasher
        self.previous: list[dict[str, Any]] = []
        self.removed: list[str] = []
        manifest = out_dir / MANIFEST
        if manifest.is_file():
            try:
                self.previous = list(json.loads(manifest.read_bytes()).get("renders", []))
            except (ValueError, AttributeError, TypeError):  # not ours, or cut short
                self.previous = []

    def split(
        self, plan: Sequence[PlannedRender]
    ) -> tuple[list[PlannedRender], list[tuple[PlannedRender, dict[str, Any]]]]:
        """The renders to make, and those the folder has (each with its old manifest entry)."""
        by_hash: dict[str, list[dict[str, Any]]] = {}
        for entry in self.previous:
            if isinstance(entry, dict) and self._intact(entry):
                by_hash.setdefault(entry["hash"], []).append(entry)
        todo, kept = [], []
        for planned in plan:
            entries = by_hash.get(self.hasher.content(planned))
            if entries:
                kept.append((planned, entries.pop(0)))
            else:
                todo.append(planned)
        return todo, kept

    def keep(
        self,
        out: LocalStorage,
        kept: Sequence[tuple[PlannedRender, dict[str, Any]]],
        settings: RenderSettings,
    ) -> list[dict[str, Any]]:
        """Put the kept renders in their places; their manifest entries. Every moved file is
        read before any is written, so scenes that swap places do not overwrite each other."""
        moved = {
            entry["file"]: (self.out_dir / entry["file"]).read_bytes()
            for planned, entry in kept
            if entry["file"] != render_filename(planned.scene_index, planned.variant)
            or (entry.get("scene"), entry.get("variant")) != (planned.scene_index, planned.variant)
        }
        out.delete(MANIFEST)  # unfinished from here until the new manifest is written
        entries = []
        for planned, entry in kept:
            name = render_filename(planned.scene_index, planned.variant)
            data = moved.get(entry["file"])
            if data is not None:
                with Image.open(io.BytesIO(data)) as image:
                    data = png_bytes(image, planned, settings)
                out.put(name, data, "image/png")
            entries.append(
                {
                    **self.entry(planned, name, data),
                    **({"sha256": entry["sha256"]} if data is None else {}),
                    "reused": True,
                }
            )
        return entries

    def entry(self, planned: PlannedRender, name: str, png: bytes | None) -> dict[str, Any]:
        """A render's manifest entry, with what finds it again."""
        entry: dict[str, Any] = {
            "file": name,
            "scene": planned.scene_index,
            "variant": planned.variant,
            "seed": planned.seed,
            "prompt": planned.prompt,
            "negative_prompt": planned.negative,
            "caption": planned.caption,
            "hash": self.hasher.content(planned),
        }
        if png is not None:
            entry["sha256"] = hashlib.sha256(png).hexdigest()
        return entry

    def remove_stale(self, out: LocalStorage, entries: Sequence[dict[str, Any]]) -> list[str]:
        """Delete the files the old manifest lists that the new one does not; their names."""
        now = {entry["file"] for entry in entries}
        for entry in self.previous:
            name = entry.get("file") if isinstance(entry, dict) else None
            if isinstance(name, str) and name not in now and _is_render_file(name):
                out.delete(name)
                self.removed.append(name)
        return self.removed

    def _intact(self, entry: dict[str, Any]) -> bool:
        name, digest = entry.get("file"), entry.get("sha256")
        if not isinstance(name, str) or not _is_render_file(name) or "hash" not in entry:
            return False
        path = self.out_dir / name
        return path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == digest


def _is_render_file(name: str) -> bool:
    """A name this folder's renders have (`0003-v1.png`), never a path out of the folder."""
    return "/" not in name and "\\" not in name and name.endswith(".png") and name[:1].isdigit()
