"""Locks by name that hold across processes and machines: "compute once, on any worker".

PostgreSQL (a cluster) gives advisory locks, which die with the connection of a worker that
dies, so a crash never leaves a lock behind. The embedded default runs on one machine, where a
file lock (`flock`) in the data folder has the same property.
"""

from __future__ import annotations

import fcntl
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, text

from farm.identity.cache import KeyLock


def _lock_id(key: str) -> int:
    """A signed 64-bit id for pg_advisory_lock, stable across processes (unlike hash())."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)


def postgres_lock(engine: Engine) -> KeyLock:
    @contextmanager
    def lock(key: str) -> Iterator[None]:
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _lock_id(key)})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": _lock_id(key)})
                connection.commit()

    return lock


def file_lock(folder: Path) -> KeyLock:
    @contextmanager
    def lock(key: str) -> Iterator[None]:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.lock"
        with open(path, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    return lock


def key_lock(engine: Engine, data_dir: Path) -> KeyLock:
    if engine.dialect.name == "postgresql":
        return postgres_lock(engine)
    return file_lock(data_dir / "locks")
