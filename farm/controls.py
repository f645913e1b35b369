"""The images a story names besides its photos, from the story to a worker's pipeline: each
scene's control image (a pose, depth or edge map) and the reference images of its outfits and
locations (`farm.composition`).

A scene names its image one of three ways, and each way in resolves it to bytes before anything
is written: a path relative to the story file (`farm render`, `farm submit`), the name of a file
uploaded with the story (the dashboard's form), or a `data:` URL inside the JSON body (the API).
Each image is judged like a reference photo (`farm.identity.photos`: a JPEG, PNG or WebP within
the pixel limits) and must have the render's size exactly, since the map is laid over the
latents pixel for pixel and a resized skeleton would move the pose. A submission stores each
image once, named by its SHA-256, under `controls/` (before the job's rows commit, as photos
are), its story refers to it as `sha256:<hex>`, and a `job_control_images` row per job and image
keeps it from `farm gc` while a job may read it. A reference image of an outfit or a location
goes every one of these ways too; it is judged like a photo, of any size (the renderer fits it
to the render's).
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from PIL import Image

from farm.control_spec import STORED, is_data_url, is_stored
from farm.errors import InputError
from farm.identity.photos import (
    ALLOWED_FORMATS,
    MAX_PHOTO_BYTES,
    MAX_PHOTO_PIXELS,
    content_hash,
    load_photo,
)
from farm.storage.base import Storage

if TYPE_CHECKING:
    from farm.composition import Location, Outfit
    from farm.story import PlannedRender, Story

# What Pillow raises on bytes that are no image; `load_photo` turns them into its message.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


@dataclass(frozen=True)
class ControlImage:
    """One control image, judged and named by its content."""

    data: bytes
    sha256: str
    width: int
    height: int

    @property
    def ref(self) -> str:
        return STORED + self.sha256


def control_key(sha256: str) -> str:
    """Content-addressed: scenes and jobs that send the same map share one object."""
    return f"controls/{sha256[:2]}/{sha256}"


def reference_images(story: Story) -> list[tuple[str, str]]:
    """Every reference image of the story's outfits and locations, as (field path, image)."""
    found = []
    for at, person in [("character", story.character)] + [
        (f"cast[{index}]", member) for index, member in enumerate(story.cast)
    ]:
        for name, outfit in person.outfits.items():
            found += [(f"{at}.outfits.{name}.images[{i}]", im) for i, im in _images(outfit)]
    for name, location in story.locations.items():
        found += [(f"locations.{name}.images[{i}]", im) for i, im in _images(location)]
    return found


def _images(part: Outfit | Location) -> list[tuple[int, str]]:
    return list(enumerate(part.images or []))


def stored_shas(story: Story) -> list[str]:
    """The content hashes of the control and reference images a job's story names, once each;
    a job is planned only from a story whose images are stored (`submitted_story`)."""
    refs = {s.control.image for s in story.scenes if s.control is not None}
    refs |= {image for _, image in reference_images(story)}
    unstored = sorted(ref[:40] for ref in refs if not is_stored(ref))
    if unstored:
        raise ValueError(f"control images not stored before planning the job: {unstored}")
    return sorted(ref.removeprefix(STORED) for ref in refs)


def judge_control_image(data: bytes, where: str, size: tuple[int, int]) -> ControlImage:
    """The image as the renders will use it, or an `InputError` naming the scene and the fix."""
    width, height = size
    try:  # the size is judged from the header first: a wrong one is the problem to name
        header: tuple[int, int] | None = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS).size
    except _DECODE_ERRORS:
        header = None  # unreadable: `load_photo` says why
    if header is not None and header != size:
        raise InputError(_wrong_size(where, header, size))
    try:
        image = load_photo(data, where, max_pixels=MAX_PHOTO_PIXELS)
    except InputError as error:
        raise InputError(str(error).replace("photo ", "control image ", 1)) from None
    if image.size != size:  # turned by its EXIF orientation
        raise InputError(_wrong_size(where, image.size, size))
    return ControlImage(data, content_hash(data), width, height)


def judge_reference_image(data: bytes, where: str) -> ControlImage:
    """An outfit's or location's reference image, judged as a photo is (any size)."""
    try:
        image = load_photo(data, where, max_pixels=MAX_PHOTO_PIXELS)
    except InputError as error:
        raise InputError(str(error).replace("photo ", "reference image ", 1)) from None
    return ControlImage(data, content_hash(data), image.width, image.height)


def _wrong_size(where: str, got: tuple[int, int], size: tuple[int, int]) -> str:
    return (
        f"control image {where!r}: {got[0]}x{got[1]}, but the story renders {size[0]}x{size[1]}; "
        "a control map must have the render's size exactly (resize or re-export it at that size)"
    )


def _data_url_bytes(image: str) -> bytes:
    try:
        return base64.b64decode(image.split(",", 1)[1], validate=True)
    except (binascii.Error, ValueError):
        raise InputError("the data URL is not valid base64") from None


def control_images(
    story: Story, files: Mapping[str, bytes], storage: Storage | None = None
) -> dict[str, ControlImage]:
    """Every control and reference image the story names, by its `image` string, read and
    judged.

    `files` holds what came with the story, by the name the story uses (a path for a story
    file, a file name for a form). With `storage`, a `sha256:` reference to an image the farm
    has stored (a story copied from a job) is read from there. Every problem is reported at
    once, one line per scene.
    """
    found: dict[str, ControlImage] = {}
    problems: list[str] = []
    size = story.render_size()
    wanted = [
        (f"scenes[{index}].control.image", scene.control.image, True)
        for index, scene in enumerate(story.scenes)
        if scene.control is not None
    ]
    wanted += [(where, image, False) for where, image in reference_images(story)]
    seen: set[str] = set()  # an image two scenes (or outfits) share is judged, and named, once
    for where, image, is_control in wanted:
        if image in seen:
            continue
        seen.add(image)
        try:
            data, name = _image_bytes(image, files, storage)
            if is_control:
                found[image] = judge_control_image(data, name, size)
            else:
                found[image] = judge_reference_image(data, name)
        except InputError as error:
            problems.append(f"{where}: {error}")
    if problems:
        raise InputError("\n".join(problems))
    return found


def _image_bytes(
    image: str, files: Mapping[str, bytes], storage: Storage | None
) -> tuple[bytes, str]:
    """An image's bytes, and the name messages give it, however the story names it."""
    if is_stored(image):
        key = control_key(image.removeprefix(STORED))
        if storage is None or not storage.exists(key):
            raise InputError(
                f"{image[:20]}... names no control or reference image stored here; send the "
                "image itself (a file, or a data: URL)"
            )
        return storage.get(key), image
    if is_data_url(image):
        return _data_url_bytes(image), "data URL"
    if image in files or PurePosixPath(image).name in files:
        # A form's upload carries its file name only: matched by a path's last part.
        return files.get(image) or files[PurePosixPath(image).name], image
    raise InputError(
        f"no image {image!r} came with the story; upload it with the story (by that file name) "
        "or give it as a data:image/png;base64 URL"
    )


def files_beside(story: Story) -> dict[str, bytes]:
    """The control and reference images a story file names by path, read from beside it (the
    CLI's way)."""
    base = story.source_dir or Path()
    images = [scene.control.image for scene in story.scenes if scene.control is not None]
    images += [image for _, image in reference_images(story)]
    files = {}
    for image in images:
        if is_data_url(image) or is_stored(image):
            continue
        path = base / image
        if path.is_file():  # a missing one is named by `control_images`
            with path.open("rb") as file:  # one byte over the limit is enough to refuse it
                files[image] = file.read(MAX_PHOTO_BYTES + 1)
    return files


def read_beside(story: Story) -> tuple[Story, dict[str, Image.Image]]:
    """`farm render`'s control maps and reference images, read from beside the story file and
    judged (every problem named at once, before a model loads), and the story naming each by
    its content as a job's does, so that each PNG's recipe says which map steered it."""
    images = control_images(story, files_beside(story))
    maps = {image.ref: decode_control(image.data, name) for name, image in images.items()}
    return with_stored_refs(story, images), maps


def with_stored_refs(story: Story, images: Mapping[str, ControlImage]) -> Story:
    """The story as a job keeps it: every control and reference image named by its stored
    content."""
    if not images:
        return story
    data = story.model_dump(mode="json")
    for scene in data["scenes"]:
        control = scene.get("control")
        if control is not None:
            control["image"] = images[control["image"]].ref
    parts = [*data["locations"].values()]
    for person in [data["character"], *data["cast"]]:
        parts += person["outfits"].values()
    for part in parts:
        if part.get("images"):
            part["images"] = [images[image].ref for image in part["images"]]
    # Where its photos' paths start stays as it was (`farm submit` reads them next).
    return type(story).model_validate(data, context={"source_dir": story.source_dir})


def submitted_story(storage: Storage, story: Story, files: Mapping[str, bytes]) -> Story:
    """A submission's control images judged and stored, and the story as its job keeps it
    (images named by content). Called before the job's transaction: a refused image leaves
    nothing, and a stored one whose job never commits is left to `farm gc`."""
    images = control_images(story, files, storage)
    store_controls(storage, images)
    return with_stored_refs(story, images)


def store_controls(storage: Storage, images: Mapping[str, ControlImage]) -> None:
    """Put each image once under its content key; one already there is the same bytes."""
    for image in {image.sha256: image for image in images.values()}.values():
        key = control_key(image.sha256)
        if not storage.exists(key):
            storage.put(key, image.data, _content_type(image.data))


def _content_type(data: bytes) -> str:
    return {b"\x89PNG": "image/png", b"RIFF": "image/webp"}.get(data[:4], "image/jpeg")


def attach(
    plan: Sequence[PlannedRender], story: Story, images: Mapping[str, Image.Image]
) -> list[PlannedRender]:
    """The planned renders with their scene's control and its map, and the pixels of their
    outfits' and location's reference images, from `images` keyed by the story's `image`
    strings (a path or name at submission, `sha256:<hex>` in a job's story)."""
    attached = []
    for planned in plan:
        control = story.scenes[planned.scene_index].control
        if control is not None:
            planned = replace(planned, control=control, control_image=images[control.image])
        dressing = story.dressing(planned.scene_index)
        if dressing:
            pixels = [tuple(images[image] for image in part.images) for part in dressing]
            dressed = tuple(replace(p, pixels=i) for p, i in zip(dressing, pixels, strict=True))
            planned = replace(planned, dressing=dressed)
        attached.append(planned)
    return attached


def stored_maps(
    storage: Storage, story: Story, plan: Sequence[PlannedRender]
) -> dict[str, Image.Image]:
    """A worker's control maps and reference images: each stored image the planned renders'
    scenes name, fetched once however many renders share it."""
    refs = {
        control.image
        for planned in plan
        if (control := story.scenes[planned.scene_index].control) is not None
    }
    scenes = {planned.scene_index for planned in plan}
    refs |= {image for index in scenes for part in story.dressing(index) for image in part.images}
    return {
        ref: decode_control(storage.get(control_key(ref.removeprefix(STORED))), ref)
        for ref in sorted(refs)
    }


def decode_control(data: bytes, where: str) -> Image.Image:
    """A stored control or reference image as RGB pixels (a worker's read: the bytes were
    judged at submission, so this only fails on storage that changed under the farm)."""
    return load_photo(data, where, max_pixels=MAX_PHOTO_PIXELS)
