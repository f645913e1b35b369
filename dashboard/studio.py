"""What a studio does through the dashboard or the API: make a character, plan and submit a
story. The pages and the API both call these, and these call the farm's own service functions
(`create_character`, `submit_story`), so every way in checks the same things the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image
from pydantic import ValidationError
from sqlalchemy.orm import Session
from werkzeug.datastructures import FileStorage

from dashboard.scope import MAX_ID, character_of
from farm.auth import Principal
from farm.characters import create_character
from farm.context import Farm
from farm.controls import submitted_story
from farm.db.models import Character
from farm.errors import InputError
from farm.estimates import estimate, spread_seconds
from farm.identity.faces import Face, FaceAnalyzer, primary_face
from farm.identity.photos import MAX_PHOTO_BYTES, Photo, decoded_pixels, load_photo
from farm.jobs import Submitted, submit_story
from farm.render.presets import PRESETS
from farm.serving import served_presets, waiting_note
from farm.settings import Settings
from farm.story import MAX_CAST, MAX_PHOTOS, Story, parse_story
from farm.story import Character as CharacterSpec
from farm.webhooks import check_webhook_url

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class PhotoCheck:
    """One uploaded photo as the farm judged it: its face, or why it cannot be used."""

    name: str
    width: int | None = None
    height: int | None = None
    box: tuple[float, float, float, float] | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


class PhotosRejected(InputError):
    """Some photos of a new character cannot be used; `checks` says which and why, for all."""

    def __init__(self, checks: Sequence[PhotoCheck]) -> None:
        self.checks = list(checks)
        super().__init__("; ".join(c.reason for c in checks if c.reason))


def refuse_nul(value: Any, where: str = "body") -> None:
    """PostgreSQL cannot store a NUL character in text; refuse it at the edge with a 400."""
    if isinstance(value, str) and "\x00" in value:
        raise InputError(f"{where}: text must not contain NUL characters")
    if isinstance(value, Mapping):
        for key, item in value.items():
            refuse_nul(key, where)
            refuse_nul(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            refuse_nul(item, f"{where}[{index}]")


def uploaded_photos(files: Iterable[FileStorage]) -> list[Photo]:
    """The photos of a form, named for messages only: a name never becomes an object key."""
    photos = []
    for number, upload in enumerate(files, start=1):
        if len(photos) == MAX_PHOTOS:
            raise InputError(f"a character takes at most {MAX_PHOTOS} photos; send fewer")
        data = upload.read(MAX_PHOTO_BYTES + 1)
        name = _CONTROL.sub("", (upload.filename or "").rsplit("/", 1)[-1].rsplit("\\", 1)[-1])
        photos.append(Photo(name[:255] or f"photo-{number}", data))
    return photos


def check_photo(faces: FaceAnalyzer, photo: Photo, max_pixels: int) -> PhotoCheck:
    try:
        image = load_photo(photo.data, photo.name, max_pixels=max_pixels)
        face = primary_face(faces, image, photo.name)
    except InputError as error:
        return PhotoCheck(photo.name, reason=str(error))
    return PhotoCheck(photo.name, image.width, image.height, face.box)


def check_photo_pixels(settings: Settings, photos: Sequence[Photo]) -> None:
    """Refuse, from the headers alone, photos that would decode to more pixels together than
    one request may (16 photos of 6000x6000 once cost 18 s and 3.5 GB); JPEGs count at the
    reduced scale they decode at. A photo whose header is unreadable counts nothing here:
    `check_photo` names what is wrong with it."""
    total = 0
    for photo in photos:
        with contextlib.suppress(InputError):
            total += decoded_pixels(photo.data, photo.name, max_pixels=settings.photo_max_pixels)
    if total > settings.upload_max_pixels:
        raise InputError(
            f"photos: {len(photos)} photos decode to {total / 1_000_000:.0f} megapixels together, "
            f"over the {settings.upload_max_pixels / 1_000_000:g} megapixel limit of one request; "
            "send fewer photos, or downscaled copies"
        )


def check_character_fields(name: str, class_word: str, trigger: str) -> None:
    """The story spec's rules for a character (one-word class word, trigger unlike it, ...)."""
    refuse_nul({"name": name, "class_word": class_word, "trigger": trigger}, "character")
    fields = {"name": name, "class_word": class_word, "trigger": trigger, "photos": ["-"]}
    try:
        CharacterSpec.model_validate(fields)
    except ValidationError as error:
        raise InputError(
            "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        ) from None


def add_character(
    farm: Farm,
    faces: FaceAnalyzer,
    who: Principal,
    *,
    name: str,
    class_word: str,
    trigger: str,
    face_crop: bool,
    photos: Sequence[Photo],
) -> Character:
    """The character, made in `who`'s project; every photo is checked before any is stored."""
    check_character_fields(name, class_word, trigger)
    if not 1 <= len(photos) <= MAX_PHOTOS:
        raise InputError(f"a character needs 1 to {MAX_PHOTOS} photos, got {len(photos)}")
    check_photo_pixels(farm.settings, photos)
    remembered = _RememberedFaces(faces)
    checks = [check_photo(remembered, photo, farm.settings.photo_max_pixels) for photo in photos]
    if not all(check.ok for check in checks):
        raise PhotosRejected(checks)
    with farm.sessions.begin() as session:
        return create_character(
            session,
            farm.storage,
            remembered,
            name=name.strip(),
            class_word=class_word,
            trigger=trigger,
            photos=photos,
            face_crop=face_crop,
            project_id=who.project_id,
        )


def cast_of(
    session: Session, who: Principal, data: Mapping[str, Any], source: str = "story"
) -> list[tuple[str, Character]]:
    """The body's `cast`: characters of `who`'s project besides the main one, each with the
    trigger word its prompts use for it (the character's own unless one is given)."""
    cast = data.get("cast", [])
    if not isinstance(cast, list) or len(cast) >= MAX_CAST:
        raise InputError(
            f"{source}: cast: a list of at most {MAX_CAST - 1} entries like "
            f'{{"character_id": 7, "trigger": "img2"}} (got {cast!r:.80})'
        )
    members = []
    for index, entry in enumerate(cast):
        where = f"{source}: cast[{index}]"
        if not isinstance(entry, Mapping) or not set(entry) <= {"character_id", "trigger"}:
            raise InputError(
                f"{where}: name one of your characters by character_id, with the trigger its "
                f"prompts use if not its own (got {entry!r:.80})"
            )
        character_id = entry.get("character_id")
        if type(character_id) is not int or not 1 <= character_id <= MAX_ID:
            raise InputError(
                f"{where}.character_id: the id of one of your characters (got {character_id!r})"
            )
        character = character_of(session, who, character_id)
        trigger = entry.get("trigger", character.trigger)
        if not isinstance(trigger, str):
            raise InputError(f"{where}.trigger: one word of letters or digits (got {trigger!r})")
        members.append((trigger, character))
    return members


def story_for(
    character: Character,
    data: Mapping[str, Any],
    source: str = "story",
    cast: Sequence[tuple[str, Character]] = (),
) -> Story:
    """A story body (everything but the characters) validated for this character's photos and
    those of its `cast` (from `cast_of`), as a story file with the same people would be."""
    refuse_nul(data, source)
    spec = _spec(character, character.trigger)
    # The character's outfits come with the body (in a story file they sit under `character`).
    body = {key: value for key, value in data.items() if key not in ("outfits", "cast")}
    if "outfits" in data:
        spec["outfits"] = data["outfits"]
    people = [_spec(member, trigger) for trigger, member in cast]
    return parse_story({**body, "character": spec, "cast": people}, presets=PRESETS, source=source)


def _spec(character: Character, trigger: str) -> dict[str, Any]:
    """A character row as a story's character section (its photos are the farm's)."""
    return {
        "name": character.name,
        "class_word": character.class_word,
        "trigger": trigger,
        "photos": [photo.name for photo in character.photos],
        "face_crop": character.face_crop,
    }


@dataclass(frozen=True)
class Plan:
    """What a story would make: shown before submitting, nothing written."""

    renders: int
    shards: int
    width: int
    height: int
    preset: str
    # What will hold it up, e.g. "no worker serves preset X: it will wait": warnings, never a
    # refusal (a worker for the preset may start).
    warnings: list[str]
    # Seconds on the farm as it is now: the device seconds spread over the live workers that
    # serve the preset; None when no worker does.
    estimated_s: float | None
    # Device seconds, from the farm's measured renders of the preset (farm/estimates.py); None
    # when it has measured none.
    estimated_device_s: float | None


def plan_of(farm: Farm, story: Story) -> Plan:
    renders = len(story.plan())
    width, height = story.render_size()
    shards = math.ceil(renders / farm.settings.shard_size)
    with farm.sessions() as session:
        served = served_presets(session)
        cost = estimate(session, story)
    note = waiting_note(story.preset, served)
    warnings = [note] if note else []
    workers = served.get(story.preset, 0)
    if cost is None:
        return Plan(renders, shards, width, height, story.preset, warnings, None, None)
    seconds = spread_seconds(renders, cost.per_render_s, workers, shards) if workers else None
    return Plan(
        renders,
        shards,
        width,
        height,
        story.preset,
        warnings,
        None if seconds is None else round(seconds, 1),
        round(cost.device_s, 1),
    )


def submit(
    farm: Farm,
    who: Principal,
    character_id: int,
    data: Mapping[str, Any],
    *,
    priority: int,
    webhook_url: str | None,
    source: str = "story",
    control_files: Mapping[str, bytes] | None = None,
) -> Submitted:
    """Plan and queue a story for one of the project's characters, as `farm submit` does.
    `control_files` are the control images uploaded with it, by file name (a form's)."""
    if webhook_url:
        check_webhook_url(webhook_url, farm.settings)
    with farm.sessions() as session:
        character = character_of(session, who, character_id)
        cast = cast_of(session, who, data, source)
        story = story_for(character, data, source, cast)
        story = submitted_story(farm.storage, story, control_files or {})
    return submit_story(
        farm,
        story,
        character_id,
        cast={trigger: member.id for trigger, member in cast},
        priority=priority,
        webhook_url=webhook_url or None,
        project_id=who.project_id,
    )


class _RememberedFaces(FaceAnalyzer):
    """Detects each image once: photos are checked one by one for the page's messages, then
    `create_character` checks them again before storing them."""

    def __init__(self, faces: FaceAnalyzer) -> None:
        self.name, self.embedding_dim = faces.name, faces.embedding_dim
        self._faces = faces
        self._seen: dict[bytes, list[Face]] = {}

    def detect(self, image: Image.Image) -> list[Face]:
        key = hashlib.sha256(repr(image.size).encode() + image.tobytes()).digest()
        if key not in self._seen:
            self._seen[key] = self._faces.detect(image)
        return self._seen[key]
