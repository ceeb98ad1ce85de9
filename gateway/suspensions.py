"""Suspensions kept in the policy store, so they hold on every node.

An operator's suspension (admin API or CLI) and complaint throttling's are
written to the store's `holds` namespace, timed ones with their end as the
record's expiry, and every node reads the namespace back each second: a
suspension made through any node of a fleet stops that traffic on all of
them within about a second, a resume through any node lifts it everywhere,
and a restart keeps what is in force. Holds reply automation puts on a
provider's deferrals stay each node's own: each node reacts to the replies
it gets.

A suspension or resume takes effect on this node at once; its write to the
store is retried each second until it lands (Redis away), and until then
reading the store back leaves that scope as this node has it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Coroutine
from typing import Any

from gateway.delivery.engine import DeliveryEngine
from gateway.delivery.holds import Scope
from gateway.log import event
from gateway.store import PolicyStore, StoreUnavailable

NAMESPACE = "holds"
SYNC_SECONDS = 1.0


class HoldKeeper:
    def __init__(self, engine: DeliveryEngine, store: PolicyStore) -> None:
        self._engine = engine
        self._store = store
        # What this node applied from the store (or wrote to it): key -> (scope, until, reason).
        self._applied: dict[str, tuple[Scope, float, str]] = {}
        # Per key, the latest write not yet in the store, and the one on its way
        # (one at a time, so a resume cannot overtake the suspension before it).
        self._unwritten: dict[str, Callable[[], Coroutine[Any, Any, Any]]] = {}
        self._writing: dict[str, asyncio.Task[Any]] = {}

    def restore(self) -> int:
        """At start: the suspensions in force; how many."""
        return self.sync(time.time())

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

    async def run(self) -> None:
        """Every second: retry writes that failed, and read the store's
        suspensions back; until cancelled."""
        while True:
            await asyncio.sleep(SYNC_SECONDS)
            for key in list(self._unwritten):
                self._launch(key)
            try:
                self.sync(time.time())
            except Exception:  # a bad record must not end the loop
                event("holds_sync_failed", logging.ERROR, exc=True)

    def _write(self, key: str, work: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        self._unwritten[key] = work
        self._launch(key)

    def _launch(self, key: str) -> None:
        if key in self._writing:
            return  # after the one on its way (see _written)
        work = self._unwritten[key]
        task = asyncio.get_running_loop().create_task(work())
        self._writing[key] = task
        task.add_done_callback(lambda done: self._written(key, work, done))

    def _written(
        self, key: str, work: Callable[[], Coroutine[Any, Any, Any]], task: asyncio.Task[Any]
    ) -> None:
        del self._writing[key]
        if task.cancelled() or task.exception() is not None:
            error = "cancelled" if task.cancelled() else str(task.exception())
            event("holds_write_failed", logging.WARNING, key=key, error=error)
            return  # kept in _unwritten: run() tries again
        if self._unwritten.get(key) is work:
            del self._unwritten[key]
        elif key in self._unwritten:
            self._launch(key)  # a newer write came meanwhile

    def suspend(self, scope: Scope, until: float, reason: str = "suspended by an operator") -> None:
        self._engine.suspend(scope, until, reason)
        key = str(scope)
        self._applied[key] = (scope, until, reason)
        timed = not math.isinf(until)
        record = {"scope": scope.fields(), "reason": reason, "until": until if timed else None}
        self._write(key, lambda: self._store.put(NAMESPACE, key, record, until if timed else None))

    def slow(self, scope: Scope, factor: float, clean_period: float) -> None:
        self._engine.slow(scope, factor, clean_period)

    def resume(self, scope: Scope) -> bool:
        key = str(scope)
        self._applied.pop(key, None)
        self._write(key, lambda: self._store.delete(NAMESPACE, key))
        return self._engine.resume(scope)
