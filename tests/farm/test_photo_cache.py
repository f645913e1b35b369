"""A worker's photo cache: each photo downloaded once, the least recently used dropped first."""

from __future__ import annotations

from types import SimpleNamespace

from farm.characters import PhotoCache
from farm.storage.local import LocalStorage


class CountingStorage(LocalStorage):
    def __init__(self, root) -> None:
        super().__init__(root)
        self.gets: list[str] = []

    def get(self, key: str) -> bytes:
        self.gets.append(key)
        return super().get(key)


def character(*keys: str) -> SimpleNamespace:
    return SimpleNamespace(photos=[SimpleNamespace(name=k, storage_key=k) for k in keys])


def test_each_photo_is_downloaded_once_and_the_oldest_goes_past_the_budget(tmp_path):
    storage = CountingStorage(tmp_path)
    for key, size in [("photos/a", 40), ("photos/b", 40), ("photos/c", 40)]:
        storage.put(key, bytes([len(key)]) * size)
    cache = PhotoCache(storage, max_bytes=100)

    first = cache.of(character("photos/a", "photos/b"))
    again = cache.of(character("photos/a", "photos/b"))
    assert [p.data for p in again] == [p.data for p in first]
    assert [p.name for p in again] == ["photos/a", "photos/b"]
    assert storage.gets == ["photos/a", "photos/b"]

    cache.of(character("photos/c"))  # 120 bytes: a, the least recently used, goes
    cache.of(character("photos/b", "photos/c"))
    assert storage.gets == ["photos/a", "photos/b", "photos/c"]
    cache.of(character("photos/a"))
    assert storage.gets[-1] == "photos/a"
