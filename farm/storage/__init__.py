"""Object storage: one interface (`Storage`), a local-folder backend and an S3 backend."""

from farm.storage.base import Storage, check_key
from farm.storage.local import LocalStorage


def open_storage(url: str) -> Storage:
    """The backend for a storage URL: `file:///path` for a folder."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return LocalStorage(unquote(parsed.path) if parsed.scheme else url)
    raise ValueError(f"unsupported storage URL {url!r}: use file:///path or s3://bucket/prefix")


__all__ = ["LocalStorage", "Storage", "check_key", "open_storage"]
