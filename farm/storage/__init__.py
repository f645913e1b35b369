"""Object storage: one interface (`Storage`), a local-folder backend and an S3 backend.

The S3 names are loaded on first use: botocore takes a noticeable part of a second to import, and a
farm on one machine, or a worker that only renders, should not pay for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from farm.errors import InputError
from farm.storage.base import Storage, StoredObject, check_key
from farm.storage.local import LocalStorage

if TYPE_CHECKING:
    from farm.storage.s3 import S3Storage, StorageError, StorageUnavailableError

_S3_NAMES = ("S3Storage", "StorageError", "StorageUnavailableError")


def __getattr__(name: str) -> Any:
    if name in _S3_NAMES:
        from farm.storage import s3

        return getattr(s3, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_storage(url: str, *, s3_endpoint_url: str | None = None) -> Storage:
    """The backend for a storage URL: `file:///path` (or a bare path) or `s3://bucket/prefix`.

    `s3_endpoint_url` is the S3-compatible server (FARM_S3_ENDPOINT_URL); None means AWS.
    """
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return LocalStorage(unquote(parsed.path) if parsed.scheme else url)
    if parsed.scheme == "s3":
        from farm.storage.s3 import S3Storage

        return S3Storage(url, endpoint_url=s3_endpoint_url)
    # Only the scheme is echoed: the rest of an unknown URL may carry credentials.
    raise InputError(
        f"unsupported storage URL scheme {parsed.scheme!r}: use file:///path or s3://bucket/prefix"
    )


__all__ = [
    "LocalStorage",
    "S3Storage",
    "Storage",
    "StorageError",
    "StorageUnavailableError",
    "StoredObject",
    "check_key",
    "open_storage",
]
