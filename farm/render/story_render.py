"""Rendering a whole story on this machine: the `farm render` command's engine.

Every render is planned and every prompt checked before the first image is made, so a bad scene
fails the command before it has written anything. Images are written whole (aside, then renamed)
with their prompt, seed and settings in the PNG metadata, and `manifest.json` is written last:
a folder with a manifest is a finished render.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from farm import __version__
from farm.controls import attach, read_beside
from farm.identity.engine import Photo
from farm.recipe import RenderSettings, png_bytes, render_filename
from farm.render.folder_reuse import FolderReuse
from farm.render.loading import LoadedPreset
from farm.render.reference_scenes import render_batches
from farm.storage.local import LocalStorage
from farm.story import Character, PlannedRender, Story


def character_photos(story: Story, character: Character | None = None) -> list[Photo]:
    return [Photo(path.name, path.read_bytes()) for path in story.photo_paths(character)]


def render_story(
    story: Story,
    out_dir: Path,
    loaded: LoadedPreset,
    *,
    batch_size: int | None = None,
    on_render: Callable[[PlannedRender, Path], None] | None = None,
    reuse: FolderReuse | None = None,
) -> Path:
    """Render every scene and variant of `story` into `out_dir`; returns the manifest's path.
    With `reuse`, renders the folder holds already (by content hash) are kept, not rendered,
    and the files of scenes the story no longer has are removed."""
    character = story.character
    settings = RenderSettings.of(story)
    story, maps = read_beside(story)  # control maps named by content, as in a job's story
    plan = attach(story.plan(), story, maps)

    started = time.perf_counter()
    identities = {
        person.trigger: loaded.identity.tokens_for(
            character_photos(story, person), crop=person.face_crop
        )
        for person in story.characters
    }
    identity = identities[character.trigger]
    class_words = {person.trigger: person.class_word for person in story.characters}
    # Check every prompt first: a scene that cannot render must fail before any image exists.
    loaded.check(plan, settings, identities, class_words)
    identity_seconds = time.perf_counter() - started
    todo, kept = (plan, []) if reuse is None else reuse.split(plan)

    # The output folder is object storage too: whole-file writes come with it.
    out = LocalStorage(out_dir)
    entries = [] if reuse is None else reuse.keep(out, kept, settings)
    size = batch_size or loaded.preset.batch_size
    for batch, result in render_batches(
        loaded, story, plan, todo, settings, identities, class_words, size
    ):
        for planned, image in zip(batch, result.images, strict=True):
            name = render_filename(planned.scene_index, planned.variant)
            png = png_bytes(image, planned, settings)
            out.put(name, png, "image/png")
            entries.append(
                {
                    "file": name,
                    "scene": planned.scene_index,
                    "variant": planned.variant,
                    "seed": planned.seed,
                    "prompt": planned.prompt,
                    "negative_prompt": planned.negative,
                    "caption": planned.caption,
                    "timings": {k: round(v / len(batch), 4) for k, v in result.timings.items()},
                }
            )
            if reuse is not None:
                entries[-1].update(reuse.entry(planned, name, png), reused=False)
            if on_render is not None:
                on_render(planned, out_dir / name)

    if reuse is not None:  # kept and new renders in scene order; gone scenes' files removed
        entries.sort(key=lambda entry: (entry["scene"], entry["variant"]))
        reuse.remove_stale(out, entries)
    manifest = {
        "software": f"render-farm {__version__}",
        "cast": [
            {"name": p.name, "class_word": p.class_word, "trigger": p.trigger} for p in story.cast
        ],
        "character": {
            "name": character.name,
            "class_word": character.class_word,
            "trigger": character.trigger,
            "photos": [p.name for p in story.photo_paths()],
            "identity": {
                "encoder": identity.encoder_fingerprint,
                "photos": identity.photos_fingerprint,
                "tokens": identity.num_tokens,
            },
        },
        "settings": asdict(settings),
        "identity_seconds": round(identity_seconds, 4),
        "renders": entries,
    }
    if reuse is not None:
        manifest["removed"] = reuse.removed
    out.put("manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False).encode())
    return out_dir / "manifest.json"
