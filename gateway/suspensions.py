"""Suspensions kept in the policy store, so they hold on every node.

An operator's suspension (admin API or CLI) and complaint throttling's are
written to the store's `holds` namespace, timed ones with their end as the
record's expiry, and every node reads the namespace back each second: a
suspension made through any node of a fleet stops that traffic on all of
them within about a second, a resume through any node lifts it everywhere,
and a restart keeps what is in force. Holds reply automation puts on a
provider's deferrals stay each node's own: each node reacts to the replies
it gets.

A suspension or resume takes effect on this node at once and is written to
the store within a second, by the same periodic work that reads it back
(`Periodic`: while Redis is away the write waits, logged as
`background_failed` with task `holds-sync`, and reading back leaves that
scope as this node has it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.delivery.engine import DeliveryEngine
from gateway.delivery.holds import Scope
from gateway.periodic import Periodic
from gateway.store import PolicyStore, StoreUnavailable

NAMESPACE = "holds"
SYNC_SECONDS = 1.0


class HoldKeeper:
    def __init__(self, engine: DeliveryEngine, store: PolicyStore) -> None:
        self._engine = engine
        self._store = store
        # What this node applied from the store (or wrote to it): key -> (scope, until, reason).
        self._applied: dict[str, tuple[Scope, float, str]] = {}
        # Per key, the latest suspension or resume not yet written to the store.
        self._unwritten: dict[str, Callable[[], Awaitable[Any]]] = {}
        self._periodic = Periodic("holds-sync", SYNC_SECONDS, self._write_and_read)

    def restore(self) -> int:
        """At start: the suspensions in force; how many."""
        return self.sync(time.time())

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        """Stop reading back; what is still unwritten is written a last time."""
        await self._periodic.stop()

    def sync(self, now: float) -> int:
        """Apply the store's suspensions that are new or changed, and lift those
        that were resumed elsewhere; how many are in force. While the store is
        unreachable, nothing changes."""
        try:
            records = list(self._store.scan(NAMESPACE))
        except StoreUnavailable:
            return len(self._applied)
        found: dict[str, tuple[Scope, float, str]] = {}
        for key, record in records:
            until = math.inf if record.get("until") is None else float(record["until"])
            if until > now:
                found[key] = (Scope(**record["scope"]), until, str(record["reason"]))
        for key, held in found.items():
            if key not in self._unwritten and self._applied.get(key) != held:
                scope, until, reason = held
                self._engine.suspend(scope, until, reason)
                self._applied[key] = held
        for key in [k for k in self._applied if k not in found and k not in self._unwritten]:
            scope, until, _ = self._applied.pop(key)
            if until > now:
                self._engine.resume(scope)  # resumed through another node
        return len(self._applied)

    async def _write_and_read(self) -> None:
        """Each second: write this node's changes (one at a time, so a resume
        cannot overtake its suspension), then read the store back. A failed
        write raises and is tried again next time."""
        for key, write in list(self._unwritten.items()):
            await write()
            if self._unwritten.get(key) is write:  # not replaced meanwhile
                del self._unwritten[key]
        self.sync(time.time())

    def suspend(self, scope: Scope, until: float, reason: str = "suspended by an operator") -> None:
        self._engine.suspend(scope, until, reason)
        key = str(scope)
        self._applied[key] = (scope, until, reason)
        timed = not math.isinf(until)
        record = {"scope": scope.fields(), "reason": reason, "until": until if timed else None}
        self._unwritten[key] = lambda: self._store.put(
            NAMESPACE, key, record, until if timed else None
        )

    def slow(self, scope: Scope, factor: float, clean_period: float) -> None:
        self._engine.slow(scope, factor, clean_period)

    def resume(self, scope: Scope) -> bool:
        key = str(scope)
        self._applied.pop(key, None)
        self._unwritten[key] = lambda: self._store.delete(NAMESPACE, key)
        return self._engine.resume(scope)
