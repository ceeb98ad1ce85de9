"""Webhooks against a receiver that fails and then recovers: signed batches,
retries, and a backlog that survives a restart."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.config import WebhookConfig
from gateway.metrics import WEBHOOK_DROPPED
from gateway.store import open_store
from gateway.testing import GatewayProcess, Receiver, free_port
from gateway.webhooks import Webhook
from tests.helpers import send
from tests.zones import MX

SECRET = "webhook-secret-0123456789"


class Hooked:
    """An HTTP receiver that answers `status` and keeps what it got."""

    def __init__(self) -> None:
        self.status = 500
        self.received: list[tuple[dict[str, Any], str, bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if outer.status == 200:
                    outer.received.append(
                        (json.loads(body), self.headers["X-Gateway-Signature"], body)
                    )
                self.send_response(outer.status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def hooked() -> Iterator[Hooked]:
    receiver = Hooked()
    yield receiver
    receiver.server.shutdown()


def test_events_are_signed_retried_and_kept_across_a_restart(
    tmp_path: Path, base_config: dict[str, Any], mx_port: int, hooked: Hooked
) -> None:
    url = f"http://127.0.0.1:{hooked.port}/events"
    config = {
        **base_config,
        "webhooks": [
            {"name": "app", "url": url, "secret": SECRET, "events": ["delivered", "bounced"]}
        ],
    }

    def reject(address: str, n: int) -> str | None:
        return "550 5.1.1 No such user" if address.startswith("unknown") else None

    gw = GatewayProcess(tmp_path, config)
    with Receiver(MX["good1"], mx_port), Receiver(MX["reject"], mx_port, rcpt_policy=reject):
        with gw.start():
            qid = send(gw.port, "app@sender.test", ["ann@good.test", "unknown@reject.test"])
            gw.wait_event("delivered", qid=qid)
            gw.wait_event("bounced", qid=qid)
            failed = gw.wait_event("webhook_failed")  # the receiver answers 500
            assert "answered 500" in failed["error"]
        hooked.status = 200  # it recovers while the gateway is down
        with gw.start():
            end = time.monotonic() + 20.0
            while not hooked.received and time.monotonic() < end:
                time.sleep(0.1)
    assert hooked.received, "the backlog was not sent after the restart"
    payload, header, body = hooked.received[0]
    events = {(e["event"], e["recipient"]) for e in payload["events"]}
    assert events == {("delivered", "ann@good.test"), ("bounced", "unknown@reject.test")}
    stamp = header.split(",")[0].removeprefix("t=")
    expected = hmac.new(SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    assert header == f"t={stamp},v1={expected}"


def test_a_full_backlog_drops_the_oldest_and_sends_the_rest_in_order(
    tmp_path: Path, hooked: Hooked
) -> None:
    """An endpoint gone for long: past max_backlog the oldest events go (counted),
    the rest survive a restart and leave in order, a batch at a time."""
    config = WebhookConfig(
        name="app",
        url=f"http://127.0.0.1:{hooked.port}/events",
        secret=SECRET,
        events=["delivered"],
        batch_size=4,
        max_backlog=10,
    )
    dropped = WEBHOOK_DROPPED.labels("app")
    before = dropped._value.get()

    async def fill() -> None:
        store = open_store(str(tmp_path / "policy.db"))
        hook = Webhook(config, store)
        for n in range(25):
            hook.add("delivered", {"recipient": f"r{n}@good.test"})
            if n % 7 == 6:
                await hook.persist()  # as the gateway does once a second
        hook.add("bounced", {"recipient": "not-subscribed@good.test"})
        await hook.persist()
        assert hook.backlog == 10
        async with aiohttp.ClientSession() as session:
            with pytest.raises(RuntimeError, match="answered 500"):
                await hook.send(session)
        store.close()

    async def drain() -> None:
        store = open_store(str(tmp_path / "policy.db"))
        hook = Webhook(config, store)  # a restart: the backlog is found again
        assert hook.backlog == 10
        async with aiohttp.ClientSession() as session:
            while await hook.send(session):
                pass
        assert hook.backlog == 0
        store.close()

    asyncio.run(fill())
    assert dropped._value.get() - before == 15
    hooked.status = 200
    asyncio.run(drain())
    batches = [[e["recipient"] for e in payload["events"]] for payload, _, _ in hooked.received]
    assert [len(b) for b in batches] == [4, 4, 2]
    assert [r for batch in batches for r in batch] == [f"r{n}@good.test" for n in range(15, 25)]
