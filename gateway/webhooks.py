"""Webhooks: signed JSON batches of events POSTed to configured URLs.

Events (delivered, deferred, bounced, complaint, unsubscribe) are taken from
the hooks as an internal plugin, written to a durable backlog in the policy
store (one transaction a second), and sent in batches. A batch is removed
from the backlog only once the receiver answered 2xx; until then it is
retried with exponential backoff (1 s doubling to 5 minutes), across
restarts too. Each request carries

    X-Gateway-Signature: t=UNIX_TIME,v1=HEX(HMAC-SHA256(secret, "t." + body))

so the receiver can check it came from us and is fresh (as Stripe's do).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from typing import Any

import aiohttp

from gateway.config import WebhookConfig
from gateway.log import event
from gateway.metrics import WEBHOOK_BACKLOG, WEBHOOK_DROPPED, WEBHOOK_SENT
from gateway.plugin import Delivery, hookimpl
from gateway.store import PolicyStore

FLUSH_SECONDS = 1.0
MAX_BACKOFF = 300.0


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


class Webhook:
    """One configured URL: its backlog and its sender."""

    def __init__(self, config: WebhookConfig, store: PolicyStore, node: str = "") -> None:
        """`node`: this node's ID when the store is shared, so that each node
        numbers, sends and clears a backlog of its own."""
        self.config = config
        self._store = store
        self._namespace = f"webhook:{config.name}" + (f":{node}" if node else "")
        self._new: list[dict[str, Any]] = []
        # The backlog holds the events numbered first..last, without gaps:
        # they are added at the end and leave from the front.
        keys = [int(k) for k, _ in store.scan(self._namespace)]
        self._last = max(keys, default=0)
        self._first = min(keys, default=1)
        WEBHOOK_BACKLOG.labels(config.name).set(self.backlog)

    @property
    def backlog(self) -> int:
        return self._last - self._first + 1

    def add(self, kind: str, fields: dict[str, Any]) -> None:
        if kind in self.config.events:
            self._new.append({"event": kind, "time": round(time.time(), 3), **fields})

    async def persist(self) -> None:
        """Write the new events to the backlog; past `max_backlog`, the oldest
        are dropped (logged and counted) so an endpoint that is gone for days
        cannot fill the disk."""
        if not self._new:
            return
        batch, self._new = self._new, []
        items = []
        for record in batch:
            self._last += 1
            items.append((_key(self._last), record, None))
        await self._store.put_many(self._namespace, items)
        excess = self.backlog - self.config.max_backlog
        if excess > 0:
            await self._forget(excess)
            WEBHOOK_DROPPED.labels(self.config.name).inc(excess)
            event("webhook_dropped", logging.WARNING, webhook=self.config.name, events=excess)
        WEBHOOK_BACKLOG.labels(self.config.name).set(self.backlog)

    async def _forget(self, count: int) -> None:
        keys = [_key(n) for n in range(self._first, self._first + count)]
        await self._store.delete_many(self._namespace, keys)
        self._first += count

    def pending(self) -> tuple[int, list[dict[str, Any]]]:
        """The oldest events, up to a batch, and how many numbers they span."""
        span = min(self.config.batch_size, self.backlog)
        found = (self._store.get(self._namespace, _key(self._first + n)) for n in range(span))
        return span, [record for record in found if record is not None]

    async def send(self, session: aiohttp.ClientSession) -> bool:
        """Send one batch from the backlog; True if there was one and it went."""
        span, batch = self.pending()
        if not span:
            return False
        body = json.dumps({"events": batch}, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Gateway-Signature": signature(self.config.secret, int(time.time()), body),
        }
        timeout = aiohttp.ClientTimeout(total=self.config.timeout)
        async with session.post(self.config.url, data=body, headers=headers, timeout=timeout) as r:
            if not 200 <= r.status < 300:
                raise RuntimeError(f"{self.config.url} answered {r.status}")
        await self._forget(span)
        WEBHOOK_BACKLOG.labels(self.config.name).set(self.backlog)
        WEBHOOK_SENT.labels(self.config.name).inc(len(batch))
        return True


def _key(number: int) -> str:
    return f"{number:020d}"


class Webhooks:
    def __init__(self, configs: list[WebhookConfig], store: PolicyStore, node: str = "") -> None:
        self.hooks = [Webhook(c, store, node) for c in configs]
        self._tasks: list[asyncio.Task[None]] = []

    def _add(self, kind: str, **fields: Any) -> None:
        for hook in self.hooks:
            hook.add(kind, fields)

    def _delivery(self, kind: str, d: Delivery) -> None:
        self._add(
            kind,
            qid=d.qid,
            sender=d.sender,
            recipient=d.recipient,
            status=d.status,
            reply=d.reply,
            bounce_class=d.bounce_class,
            source=d.source,
            tenant=d.tenant,
            campaign=d.campaign,
        )

    @hookimpl
    def delivery_delivered(self, delivery: Delivery) -> None:
        self._delivery("delivered", delivery)

    @hookimpl
    def delivery_deferred(self, delivery: Delivery) -> None:
        self._delivery("deferred", delivery)

    @hookimpl
    def delivery_bounced(self, delivery: Delivery) -> None:
        self._delivery("bounced", delivery)

    @hookimpl
    def feedback_complaint(self, recipient: str, sender_domain: str, source: str, qid: str) -> None:
        self._add("complaint", qid=qid, recipient=recipient, sender_domain=sender_domain)

    @hookimpl
    def feedback_unsubscribe(
        self, recipient: str, list_id: str, sender_domain: str, method: str
    ) -> None:
        self._add(
            "unsubscribe",
            recipient=recipient,
            list_id=list_id,
            sender_domain=sender_domain,
            method=method,
        )

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(h), name=f"webhook:{h.config.name}") for h in self.hooks
        ]

    async def _run(self, hook: Webhook) -> None:
        backoff = 1.0
        async with aiohttp.ClientSession() as session:
            while True:
                await hook.persist()
                try:
                    while await hook.send(session):
                        backoff = 1.0
                except (aiohttp.ClientError, TimeoutError, RuntimeError) as exc:
                    event(
                        "webhook_failed",
                        logging.WARNING,
                        webhook=hook.config.name,
                        error=str(exc),
                        retry_in=backoff,
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
                    continue
                await asyncio.sleep(FLUSH_SECONDS)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for hook in self.hooks:
            await hook.persist()  # what has not gone stays in the backlog
