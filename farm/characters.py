"""Creating characters: photos checked at the edge, stored under their content hash, one row.

The CLI, the API and the dashboard all create characters here, so every way in refuses the
same photos with the same message.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.db.models import Character, CharacterPhoto, project_or_default
from farm.errors import InputError
from farm.identity.faces import FaceAnalyzer, primary_face
from farm.identity.photos import Photo, load_photo
from farm.storage.base import Storage
from farm.story import MAX_PHOTOS


def photo_key(sha256: str) -> str:
    """Photos are stored by content: the same photo uploaded twice is one object."""
    return f"photos/{sha256[:2]}/{sha256}"


def photos_fingerprint(photos: Sequence[Photo]) -> str:
    return hashlib.sha256("\n".join(p.sha256 for p in photos).encode()).hexdigest()


def create_character(
    session: Session,
    storage: Storage,
    faces: FaceAnalyzer,
    *,
    name: str,
    class_word: str,
    trigger: str,
    photos: Sequence[Photo],
    face_crop: bool = False,
    project_id: int | None = None,
) -> Character:
    """The character with these photos, created if new. Every photo must show a face.

    Resubmitting a story finds the character it made before (same name, words and photos)
    instead of making a twin whose identity tokens would be computed again.
    """
    if not 1 <= len(photos) <= MAX_PHOTOS:
        raise InputError(f"a character needs 1 to {MAX_PHOTOS} photos, got {len(photos)}")
    fingerprint = photos_fingerprint(photos)
    existing = session.scalars(
        select(Character).where(
            Character.photos_fingerprint == fingerprint,
            Character.name == name,
            Character.class_word == class_word,
            Character.trigger == trigger,
            Character.face_crop == face_crop,
            Character.project_id == project_or_default(project_id),
            Character.deleted.is_(None),
        )
    ).first()
    if existing is not None:
        return existing

    # Check every photo before storing any, so a rejected upload leaves nothing behind.
    checked = []
    for photo in photos:
        image = load_photo(photo.data, photo.name)
        checked.append((photo, image, primary_face(faces, image, photo.name)))
    character = Character(
        name=name,
        class_word=class_word,
        trigger=trigger,
        face_crop=face_crop,
        photos_fingerprint=fingerprint,
        project_id=project_or_default(project_id),
    )
    for position, (photo, image, face) in enumerate(checked):
        key = photo_key(photo.sha256)
        # Stored again even when the object exists: the write makes it new, so `farm gc`, which
        # only takes objects older than its grace period, cannot delete it under this row.
        storage.put(key, photo.data, "application/octet-stream")
        x0, y0, x1, y1 = face.box
        character.photos.append(
            CharacterPhoto(
                position=position,
                name=photo.name[:255],
                sha256=photo.sha256,
                storage_key=key,
                width=image.width,
                height=image.height,
                face_x0=x0,
                face_y0=y0,
                face_x1=x1,
                face_y1=y1,
                face_score=face.score,
            )
        )
    session.add(character)
    session.flush()
    return character


def character_photos(storage: Storage, character: Character) -> list[Photo]:
    """The character's photos as the identity engine takes them, read from object storage."""
    return [Photo(p.name, storage.get(p.storage_key)) for p in character.photos]


class PhotoCache:
    """Characters' photos as a worker reads them shard after shard, kept in memory up to
    `max_bytes`, the least recently used going first.

    A shard needs its characters' photos (to key the identity tokens and the QC reference), and
    a worker renders the same characters all day: without this, every shard downloads them
    again, megabytes each on a real farm. Photo keys are content addresses, so a kept copy is
    never stale.
    """

    def __init__(self, storage: Storage, max_bytes: int = 256 * 2**20) -> None:
        self.storage = storage
        self.max_bytes = max_bytes
        self._kept: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0

    def of(self, character: Character) -> list[Photo]:
        return [Photo(p.name, self._bytes(p.storage_key)) for p in character.photos]

    def _bytes(self, key: str) -> bytes:
        data = self._kept.pop(key, None)
        if data is None:
            data = self.storage.get(key)
            self._size += len(data)
        self._kept[key] = data  # now the most recently used
        while self._size > self.max_bytes and len(self._kept) > 1:
            _, dropped = self._kept.popitem(last=False)
            self._size -= len(dropped)
        return data
