"""The identity-token cache: in memory (LRU), then object storage, then compute once.

A second job for the same character must never run the vision tower again, on any worker. The
memory tier serves a warm worker; the storage tier (`identity/<encoder>/<photos>.safetensors`)
serves every other worker. `lock` makes "compute once" hold beyond one process: the embedded
default uses a per-key thread lock, a cluster passes a distributed one.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

from farm.identity.tokens import IdentityTokens
from farm.metrics import record_identity_lookup
from farm.storage.base import Storage

KeyLock = Callable[[str], AbstractContextManager[None]]


def identity_key(encoder_fingerprint: str, photos_fingerprint: str) -> str:
    return f"identity/{encoder_fingerprint[:32]}/{photos_fingerprint}.safetensors"


@dataclass
class CacheStats:
    memory_hits: int = 0
    storage_hits: int = 0
    computed: int = 0


class _ThreadKeyLock:
    """One lock per key within this process."""

    def __init__(self) -> None:
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    @contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            yield


class IdentityCache:
    def __init__(
        self, storage: Storage | None = None, capacity: int = 64, lock: KeyLock | None = None
    ) -> None:
        self.storage = storage
        self.capacity = capacity
        self.lock: KeyLock = lock or _ThreadKeyLock()
        self.stats = CacheStats()
        self._memory: OrderedDict[str, IdentityTokens] = OrderedDict()
        self._memory_guard = threading.Lock()

    def _remember(self, key: str, tokens: IdentityTokens) -> None:
        with self._memory_guard:
            self._memory[key] = tokens
            self._memory.move_to_end(key)
            while len(self._memory) > self.capacity:
                self._memory.popitem(last=False)

    def _from_memory(self, key: str) -> IdentityTokens | None:
        with self._memory_guard:
            tokens = self._memory.get(key)
            if tokens is not None:
                self._memory.move_to_end(key)
            return tokens

    def _from_storage(self, key: str) -> IdentityTokens | None:
        if self.storage is None:
            return None
        try:
            tokens = IdentityTokens.from_bytes(self.storage.get(key))
        except KeyError:
            return None
        self._remember(key, tokens)
        return tokens

    def get_or_compute(
        self,
        encoder_fingerprint: str,
        photos_fingerprint: str,
        compute: Callable[[], IdentityTokens],
    ) -> IdentityTokens:
        key = identity_key(encoder_fingerprint, photos_fingerprint)
        tokens = self._from_memory(key)
        if tokens is not None:
            self.stats.memory_hits += 1
            record_identity_lookup("memory")
            return tokens
        with self.lock(key):
            # Whoever held the lock before us may have stored them meanwhile.
            tokens = self._from_memory(key) or self._from_storage(key)
            if tokens is not None:
                self.stats.storage_hits += 1
                record_identity_lookup("storage")
                return tokens
            tokens = compute()
            if self.storage is not None:
                self.storage.put(key, tokens.to_bytes())
            self._remember(key, tokens)
            self.stats.computed += 1
            record_identity_lookup("computed")
            return tokens
