"""What was sent, remembered so late bounces and complaints find their message.

One record per queue ID in the policy store (namespace "sent"): sender,
tenant, campaign, stream, and per delivered recipient the egress source and
provider. Records are written in batches once a second (a crash can lose the
last second's records: reports about those messages then go unmatched) and
expire after `feedback.remember`. While a shared store is unreachable the
records wait in memory and go with the next flush that succeeds.
"""

from __future__ import annotations

import time
from typing import Any

from gateway.periodic import Periodic
from gateway.plugin import Delivery
from gateway.store import PolicyStore, StoreUnavailable

NAMESPACE = "sent"
FLUSH_SECONDS = 1.0


class SentIndex:
    def __init__(self, store: PolicyStore, remember: float) -> None:
        self._store = store
        store.keep_cold(NAMESPACE)  # one record per message sent: never all in memory
        self._remember = remember
        self._pending: dict[str, dict[str, Any]] = {}
        self._flusher = Periodic("sent-index", FLUSH_SECONDS, self.flush)

    def delivered(self, delivery: Delivery) -> None:
        record = self._pending.get(delivery.qid) or dict(
            self._stored(delivery.qid)
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

    def _stored(self, qid: str) -> dict[str, Any] | None:
        """The message's record from earlier deliveries (none if the store is out
        of reach: the record then starts again, and the next flush replaces the
        stored one with what this delivery knows)."""
        try:
            return self._store.get(NAMESPACE, qid)
        except StoreUnavailable:
            return None

    def lookup(self, qid: str) -> dict[str, Any] | None:
        return self._pending.get(qid) or self._store.get(NAMESPACE, qid)

    async def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        expires = time.time() + self._remember
        try:
            await self._store.put_many(NAMESPACE, [(q, r, expires) for q, r in batch.items()])
        except StoreUnavailable:
            self._pending = {**batch, **self._pending}  # kept for the next flush
            raise

    def start(self) -> None:
        self._flusher.start()

    async def stop(self) -> None:
        await self._flusher.stop()
