"""The object-storage interface every backend implements, and the rules for keys.

Keys are made by the farm (`jobs/<job>/renders/<scene>-v<variant>.png`, `identity/...`), never
taken from user text as they are; `check_key` refuses anything that could escape the prefix.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from farm.errors import InputError

_KEY_PART = re.compile(r"^[A-Za-z0-9._=+-]+$")


def check_key(key: str) -> str:
    """Return `key` if it is a safe relative object key, else raise `InputError`."""
    if not key or key.startswith("/") or key.endswith("/") or "\\" in key:
        raise InputError(f"invalid object key {key!r}: must be a relative path like 'a/b.png'")
    for part in key.split("/"):
        if part in ("", ".", "..") or not _KEY_PART.match(part):
            raise InputError(
                f"invalid object key {key!r}: part {part!r} is not allowed "
                "(use letters, digits, '.', '_', '-', '=', '+'; no '..' or empty parts)"
            )
    return key


@dataclass(frozen=True)
class StoredObject:
    """One object as a listing shows it: what `farm gc` needs to judge and report it."""

    key: str
    size: int  # bytes
    modified: datetime  # timezone-aware; a grace period is measured from it


class Storage(ABC):
    """Bytes under keys. Writes are whole-object: a reader never sees half a file."""

    url: str

    @abstractmethod
    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Store `data` under `key`, replacing what was there."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """Return the bytes under `key`; raise `KeyError` when there are none."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; removing a missing key is not an error (deletes are idempotent)."""

    def list(self, prefix: str = "") -> Iterator[str]:
        """Yield every key that starts with `prefix`, in lexicographic order."""
        for stored in self.objects(prefix):
            yield stored.key

    @abstractmethod
    def objects(self, prefix: str = "") -> Iterator[StoredObject]:
        """Like `list`, with each object's size and modification time (one listing, no HEADs)."""

    @abstractmethod
    def url_for(self, key: str, expires_s: int = 3600, download_name: str | None = None) -> str:
        """A URL a browser can GET: presigned for S3, `file://` for a folder. With
        `download_name`, a browser saves what it gets under that name (S3 answers with it)."""
