"""Two gateway nodes sharing a real Redis: one suppression list for both,
fail-closed checks while Redis is gone, and its state after a restart."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.testing import GatewayProcess, Receiver, RedisServer
from gateway.testing.client import SendResult, send_message
from tests.helpers import make_message
from tests.zones import MX


def fleet_config(base: dict[str, Any], redis: RedisServer) -> dict[str, Any]:
    return {
        **base,
        "store": {"backend": "redis", "redis_url": redis.url, "redis_prefix": "fleet-test"},
        "plugins": {"enabled": ["suppression"]},
    }


def until(check: Callable[[], SendResult], done: Callable[[SendResult], bool]) -> SendResult:
    """Send until `done` holds (changes reach a node within a moment), at most 10 s."""
    deadline = time.monotonic() + 10
    while True:
        result = check()
        if done(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def test_two_nodes_share_suppressions_and_fail_closed_without_redis(
    tmp_path: Path, base_config: dict[str, Any], mx_port: int
) -> None:
    redis = RedisServer().start()
    config = fleet_config(base_config, redis)
    try:
        with (
            Receiver(MX["good1"], mx_port) as mx,
            GatewayProcess(tmp_path / "a", config) as a,
            GatewayProcess(tmp_path / "b", config) as b,
        ):

            def to(node: GatewayProcess, rcpt: str) -> SendResult:
                return send_message(node.port, "app@sender.test", [rcpt], make_message("fleet"))

            status, _ = a.admin("POST", "/suppression", {"address": "ann@good.test"})
            assert status == 200
            refused = until(lambda: to(b, "ann@good.test"), lambda r: r.qid is None)
            assert refused.refused == {
                "ann@good.test": "550 5.7.1 Recipient is on a suppression list (manual)"
            }
            assert to(b, "bob@good.test").qid
            mx.wait_for(1)

            redis.kill()
            closed = until(lambda: to(b, "carl@good.test"), lambda r: r.qid is None)
            assert closed.refused == {
                "carl@good.test": "451 4.3.0 Policy state unavailable; try again later"
            }
            assert b.wait_event("store_unavailable")["backend"] == "redis"

            redis.start()  # same port and data directory: the list is still there
            deadline = time.monotonic() + 15
            while len(b.events("store_connected")) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)  # the first was at start
            opened = until(lambda: to(b, "carl@good.test"), lambda r: r.qid is not None)
            assert opened.qid
            assert to(a, "ann@good.test").qid is None  # the suppression survived
            status, _ = b.admin("POST", "/suppression", {"address": "dee@good.test"})
            assert status == 200
            assert until(lambda: to(a, "dee@good.test"), lambda r: r.qid is None).refused
    finally:
        redis.stop()
