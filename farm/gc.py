"""`farm gc`: the objects in storage that no row needs any more, found and (on request) deleted.

Storage is written by the farm under six prefixes, and each has its own rule for "needed":

- `jobs/<job>/...` (renders, thumbnails, comic pages, exports): needed while the job's row
  exists, or while a render of another job, current or retired by a revision, names the image
  (renders are reused by content hash across a project's jobs, farm/reuse.py). Workers write
  them only after the job's row has committed.
- `photos/<xx>/<sha256>` (a character's reference photos, stored once per content and shared
  by every character made from the same photo): needed while a photo row names it and its
  character is either not deleted or still named by a job, as the main character or in the
  cast, since retrying that job reads the photos again. Deleting a character only marks its row.
- `controls/<xx>/<sha256>` (a scene's pose, depth or edge map, stored once per content and
  shared by every job that sends it): needed while a `job_control_images` row names it; the
  rows go with their job.
- `consistency/<character>/<digest>/...` (a story-mode job's reference-scene tokens, shared by
  every job with the same references): needed while a `job_consistency_tokens` row names the
  prefix; the rows go with their job.
- `reference-images/<digest>/...` (the tokens of an outfit's or location's reference images,
  farm/render/reference_images.py, shared by every job that uses them at the same settings):
  needed while a `job_consistency_tokens` row names the prefix, as reference scenes' tokens.
- `identity/<encoder>/<photos>.safetensors` (the identity-token cache): needed while its
  `identity_tokens` row exists. A cache object without a row is left by a worker that died
  between computing the tokens and recording them; the next job computes them again.

Anything else is not the farm's and is never touched. Photos and identity tokens are written
before the rows that name them commit (a submission stores the photos inside its transaction),
so only objects older than a grace period are judged at all. Objects are judged and deleted a
page at a time, which keeps the moment between "no row needs it" and the delete short.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from itertools import islice

from sqlalchemy import exists, or_, select
from sqlalchemy.orm import Session

from farm.context import Farm
from farm.db.models import (
    CastMember,
    Character,
    CharacterPhoto,
    Job,
    JobConsistencyTokens,
    JobControlImage,
    Render,
    RetiredRender,
    StoredIdentityTokens,
)
from farm.db.types import utcnow
from farm.storage.base import StoredObject

GRACE = timedelta(hours=1)
PAGE = 500  # keys per SQL query: well under every database's limit on bound parameters

# Of the owners given (job ids, or the keys themselves), those still needed.
Needed = Callable[[Session, list[str]], set[str]]


def _job_of(key: str) -> str | None:
    parts = key.split("/")
    return parts[1] if len(parts) > 2 else None


def _jobs_needed(session: Session, job_ids: list[str]) -> set[str]:
    return set(session.scalars(select(Job.id).where(Job.id.in_(job_ids))))


def _job_key(key: str) -> str | None:
    return key if _job_of(key) is not None else None


def _job_objects_needed(session: Session, keys: list[str]) -> set[str]:
    """Keys of live jobs, and the images any render names, in whichever job it is."""
    jobs = _jobs_needed(session, sorted({_job_of(key) or "" for key in keys}))
    needed = {key for key in keys if _job_of(key) in jobs}
    for column in (
        Render.storage_key,
        Render.thumb_key,
        RetiredRender.storage_key,
        RetiredRender.thumb_key,
    ):
        needed |= set(session.scalars(select(column).where(column.in_(keys))))
    return needed


def _photos_needed(session: Session, keys: list[str]) -> set[str]:
    in_use = or_(
        Character.deleted.is_(None),
        exists().where(Job.character_id == Character.id),
        exists().where(CastMember.character_id == Character.id),
    )
    return set(
        session.scalars(
            select(CharacterPhoto.storage_key)
            .join(Character, Character.id == CharacterPhoto.character_id)
            .where(CharacterPhoto.storage_key.in_(keys), in_use)
        )
    )


def _identity_needed(session: Session, keys: list[str]) -> set[str]:
    return set(
        session.scalars(
            select(StoredIdentityTokens.storage_key).where(
                StoredIdentityTokens.storage_key.in_(keys)
            )
        )
    )


def _controls_needed(session: Session, keys: list[str]) -> set[str]:
    return set(
        session.scalars(
            select(JobControlImage.storage_key).where(JobControlImage.storage_key.in_(keys))
        )
    )


def _tokens_prefix(key: str) -> str | None:
    parts = key.split("/")
    return "/".join(parts[:3]) if len(parts) > 3 else None


def _images_prefix(key: str) -> str | None:
    parts = key.split("/")
    return "/".join(parts[:2]) if len(parts) > 2 else None


def _consistency_needed(session: Session, prefixes: list[str]) -> set[str]:
    return set(
        session.scalars(
            select(JobConsistencyTokens.storage_prefix).where(
                JobConsistencyTokens.storage_prefix.in_(prefixes)
            )
        )
    )


def _whole_key(key: str) -> str:
    return key


# A prefix, how to read the owner of a key under it (None: not a key the farm writes, kept),
# and which owners are still needed.
RULES: list[tuple[str, Callable[[str], str | None], Needed]] = [
    ("jobs/", _job_key, _job_objects_needed),
    ("photos/", _whole_key, _photos_needed),
    ("controls/", _whole_key, _controls_needed),
    ("consistency/", _tokens_prefix, _consistency_needed),
    ("reference-images/", _images_prefix, _consistency_needed),
    ("identity/", _whole_key, _identity_needed),
]


def _pages(objects: Iterator[StoredObject]) -> Iterator[list[StoredObject]]:
    while page := list(islice(objects, PAGE)):
        yield page


def find_garbage(
    farm: Farm, *, grace: timedelta = GRACE, now: datetime | None = None
) -> Iterator[StoredObject]:
    """Every object of the farm's prefixes that no row needs, older than `grace`, in key order
    within each prefix. Lazy: a caller that deletes as it goes deletes each page right after
    judging it."""
    cutoff = (now or utcnow()) - grace
    for prefix, owner_of, needed in RULES:
        old = (o for o in farm.storage.objects(prefix) if o.modified <= cutoff)
        for page in _pages(old):
            owners = {o.key: owner_of(o.key) for o in page}
            with farm.sessions() as session:
                alive = needed(session, sorted({owner for owner in owners.values() if owner}))
            yield from (o for o in page if owners[o.key] is not None and owners[o.key] not in alive)
