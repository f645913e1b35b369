"""Object storage in a local folder: the embedded default, and a cache on one machine."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from farm.storage.base import Storage, StoredObject, check_key


class LocalStorage(Storage):
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write aside, then rename: readers and crashes never see a half-written object. Made
        # with mode 0666 less the umask, as any other program's files (mkstemp's 0600 would
        # leave a render folder unreadable to the studio's other accounts).
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def objects(self, prefix: str = "") -> Iterator[StoredObject]:
        """Hidden files are the half-written `.name.part` of a put in progress: not objects."""
        if not self.root.is_dir():
            return
        paths = {
            p.relative_to(self.root).as_posix(): p
            for p in self.root.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        }
        for key in sorted(k for k in paths if k.startswith(prefix)):
            try:
                stat = paths[key].stat()
            except FileNotFoundError:  # deleted since the walk
                continue
            yield StoredObject(key, stat.st_size, datetime.fromtimestamp(stat.st_mtime, UTC))

    def url_for(self, key: str, expires_s: int = 3600, download_name: str | None = None) -> str:
        return self._path(key).as_uri()  # no browser fetches it: the dashboard serves the bytes
