"""What was sent, remembered so late bounces and complaints find their message.

One record per queue ID in the policy store (namespace "sent"): sender,
tenant, campaign, stream, and per delivered recipient the egress source and
provider. Records are written in batches once a second (a crash can lose the
last second's records: reports about those messages then go unmatched) and
expire after `feedback.remember`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from gateway.plugin import Delivery
from gateway.store import PolicyStore

NAMESPACE = "sent"
FLUSH_SECONDS = 1.0


class SentIndex:
    def __init__(self, store: PolicyStore, remember: float) -> None:
        self._store = store
        store.keep_cold(NAMESPACE)  # one record per message sent: never all in memory
        self._remember = remember
        self._pending: dict[str, dict[str, Any]] = {}
        self._task: asyncio.Task[None] | None = None

    def delivered(self, delivery: Delivery) -> None:
        record = self._pending.get(delivery.qid) or dict(
            self._store.get(NAMESPACE, delivery.qid)
            or {
                "sender": delivery.sender,
                "tenant": delivery.tenant,
                "campaign": delivery.campaign,
                "stream": delivery.stream,
                "rcpts": {},
            }
        )
        record["rcpts"] = {
            **record["rcpts"],
            delivery.recipient.lower(): {
                "source": delivery.source,
                "provider": delivery.provider,
                "i": delivery.index,
            },
        }
        self._pending[delivery.qid] = record

    def lookup(self, qid: str) -> dict[str, Any] | None:
        return self._pending.get(qid) or self._store.get(NAMESPACE, qid)

    async def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        expires = time.time() + self._remember
        await self._store.put_many(NAMESPACE, [(q, r, expires) for q, r in batch.items()])

    def start(self) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(FLUSH_SECONDS)
                await self.flush()

        self._task = asyncio.create_task(loop(), name="sent-index")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
