"""Policy state: suppressions, consent records, warm-up progress and counts.

A small interface so the backend can change (embedded SQLite now, Redis for a
fleet in issue 9): records are JSON objects under (namespace, key), with an
optional expiry. Reads are synchronous and served from memory, because they
sit on the SMTP hot path (one per RCPT); writes are async and durable when
they return, and the memory copy is updated at the same time, so a read after
a write sees it. Changes made by another process (the CLI's CSV import) are
picked up within a second.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

Record = dict[str, Any]


class PolicyStore(ABC):
    @abstractmethod
    def get(self, namespace: str, key: str) -> Record | None:
        """The record, or None if absent or expired."""

    @abstractmethod
    def scan(self, namespace: str, prefix: str = "") -> Iterator[tuple[str, Record]]:
        """Every live record of a namespace whose key starts with `prefix`."""

    @abstractmethod
    async def put(
        self, namespace: str, key: str, record: Mapping[str, Any], expires_at: float | None = None
    ) -> None:
        """Store (or replace) a record; durable when this returns."""

    @abstractmethod
    async def put_many(
        self, namespace: str, items: Sequence[tuple[str, Mapping[str, Any], float | None]]
    ) -> None:
        """Store many records in one transaction."""

    @abstractmethod
    async def delete_many(self, namespace: str, keys: Sequence[str]) -> int:
        """Remove records in one transaction; how many there were."""

    async def delete(self, namespace: str, key: str) -> bool:
        """Remove a record; False if there was none."""
        return await self.delete_many(namespace, [key]) > 0

    @abstractmethod
    def close(self) -> None: ...


def open_store(path: str) -> PolicyStore:
    from gateway.store.sqlite import SqliteStore

    return SqliteStore(path)
