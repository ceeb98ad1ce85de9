"""Policy state: suppressions, consent records, warm-up progress and counts.

A small interface so the backend can change (embedded SQLite now, Redis for a
fleet): records are JSON objects under (namespace, key), with an
optional expiry. Reads are synchronous and served from memory, because they
sit on the SMTP hot path (one per RCPT); writes are async and durable when
they return, and the memory copy is updated at the same time, so a read after
a write sees it. Changes made by another process (the CLI's CSV import) are
picked up within a second.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.config import StoreConfig

Record = dict[str, Any]


class PolicyStore(ABC):
    @abstractmethod
    def get(self, namespace: str, key: str) -> Record | None:
        """The record, or None if absent or expired."""

    @abstractmethod
    def scan(self, namespace: str, prefix: str = "") -> Iterator[tuple[str, Record]]:
        """Every live record of a namespace whose key starts with `prefix`."""

    async def put(
        self, namespace: str, key: str, record: Mapping[str, Any], expires_at: float | None = None
    ) -> None:
        """Store (or replace) a record; durable when this returns."""
        await self.put_many(namespace, [(key, record, expires_at)])

    @abstractmethod
    async def put_many(
        self, namespace: str, items: Sequence[tuple[str, Mapping[str, Any], float | None]]
    ) -> None:
        """Store many records in one transaction."""

    @abstractmethod
    async def delete_many(self, namespace: str, keys: Sequence[str]) -> int:
        """Remove records in one transaction; how many there were."""

    @abstractmethod
    async def add_counts(
        self, namespace: str, items: Sequence[tuple[str, Mapping[str, int], float | None]]
    ) -> list[Record]:
        """Add to numeric fields of records in one atomic step, so that nodes
        counting the same thing (a complaint window, a warm-up day) add up
        instead of overwriting each other; each record's totals, in order. A
        missing field counts from 0, an expired record from nothing."""

    @abstractmethod
    async def take_up_to(
        self, namespace: str, key: str, field: str, want: int, limit: int, expires_at: float | None
    ) -> int:
        """Atomically add to `field` as much of `want` as keeps it at or under
        `limit`, and say how much that was (0 when the limit is reached): how
        nodes share one budget, such as a warm-up day's cap."""

    @property
    def healthy(self) -> bool:
        """False while a shared store cannot be reached and checks that read it
        fail closed; an embedded store always is."""
        return True

    async def delete(self, namespace: str, key: str) -> bool:
        """Remove a record; False if there was none."""
        return await self.delete_many(namespace, [key]) > 0

    def keep_cold(self, namespace: str) -> None:  # noqa: B027 - optional for backends
        """Read `namespace` from the backend on demand instead of holding it in
        memory: for large, rarely read namespaces (the sent-message index).
        A backend without a memory copy has nothing to do."""

    @abstractmethod
    def close(self) -> None: ...


class StoreUnavailable(Exception):
    """The shared store cannot be reached, so what it holds may be stale or
    unknown: checks that depend on it fail closed (451 4.3.0 at SMTP)."""


Entry = tuple[Record, float | None]  # a record and when it expires (None: never)


class MirroredStore(PolicyStore):
    """Reads from a memory copy of each namespace, loaded on first use; cold
    namespaces are read from the backend each time."""

    _cold: frozenset[str] = frozenset()

    @abstractmethod
    def _namespace(self, namespace: str) -> dict[str, Entry]:
        """The namespace's entries, loading them if needed."""

    @abstractmethod
    def _fetch(self, namespace: str, key: str) -> Entry | None:
        """One entry of a cold namespace, from the backend."""

    @abstractmethod
    def _fetch_prefix(self, namespace: str, prefix: str) -> Iterator[tuple[str, Entry]]:
        """The entries of a cold namespace whose keys start with `prefix`."""

    def keep_cold(self, namespace: str) -> None:
        self._cold = self._cold | {namespace}

    def _held(self, namespace: str) -> dict[str, Entry] | None:
        """The memory copy to update after a write, if the namespace is held."""
        return None if namespace in self._cold else self._namespace(namespace)

    def get(self, namespace: str, key: str) -> Record | None:
        if namespace in self._cold:
            found = self._fetch(namespace, key)
        else:
            found = self._namespace(namespace).get(key)
        if found is None or (found[1] is not None and found[1] <= time.time()):
            return None
        return found[0]

    def scan(self, namespace: str, prefix: str = "") -> Iterator[tuple[str, Record]]:
        now = time.time()
        if namespace in self._cold:
            entries: Iterator[tuple[str, Entry]] = self._fetch_prefix(namespace, prefix)
        else:
            entries = iter(list(self._namespace(namespace).items()))
        for key, (record, expires) in entries:
            if key.startswith(prefix) and (expires is None or expires > now):
                yield key, record


def open_store(target: str | StoreConfig) -> PolicyStore:
    """The store a configuration names ([store]), or an SQLite file by path."""
    if isinstance(target, str):
        from gateway.store.sqlite import SqliteStore

        return SqliteStore(target)
    if target.backend == "redis":
        from gateway.store.redis_store import RedisStore

        return RedisStore(target.redis_url, target.redis_prefix)
    from gateway.store.sqlite import SqliteStore

    assert target.path is not None
    return SqliteStore(target.path)
