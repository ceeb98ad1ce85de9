"""Two gateway nodes sharing a real Redis: one suppression list for both,
fail-closed checks while Redis is gone, and its state after a restart; one
site rate and connection limit, one per-source rate and connection limit
for nodes sending from one address, one warm-up cap, one complaint window."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis as redis_client

from gateway.delivery.fleet_limits import FleetLimits
from gateway.testing import GatewayProcess, Receiver, RedisServer
from gateway.testing.client import SendResult, send_message
from tests import reports
from tests.helpers import make_message
from tests.test_webhooks import Hooked
from tests.zones import MX

OUTSIDER = "127.0.0.77"
T = TypeVar("T")  # not in relay_networks: may only send reports


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@contextmanager
def two_nodes(
    tmp_path: Path, config: dict[str, Any], mx: Receiver
) -> Iterator[tuple[Receiver, GatewayProcess, GatewayProcess]]:
    """The receiving MX and two gateway nodes a and b of one configuration."""
    with (
        mx,
        GatewayProcess(tmp_path / "a", config) as a,
        GatewayProcess(tmp_path / "b", config) as b,
    ):
        yield mx, a, b


def fleet_config(base: dict[str, Any], redis: RedisServer) -> dict[str, Any]:
    return {
        **base,
        "store": {"backend": "redis", "redis_url": redis.url, "redis_prefix": "fleet-test"},
        "plugins": {"enabled": ["suppression"]},
    }


def until(check: Callable[[], T], done: Callable[[T], bool], seconds: float = 10) -> T:
    """`check` again until `done` holds of its result (changes reach a node
    within a moment), for at most `seconds`; the last result."""
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if done(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def test_two_nodes_share_suppressions_and_fail_closed_without_redis(
    tmp_path: Path, base_config: dict[str, Any], mx_port: int, redis: RedisServer
) -> None:
    config = fleet_config(base_config, redis)
    with two_nodes(tmp_path, config, Receiver(MX["good1"], mx_port)) as (mx, a, b):

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


def shaped_fleet(
    base: dict[str, Any], redis: RedisServer, rules: Path, rule: str
) -> dict[str, Any]:
    """Nodes sharing `redis` with one shaping `rule` file, and no plugin that
    reads the store at RCPT (so only the limits under test act)."""
    rules.write_text(rule)
    return {
        **base,
        "store": {"backend": "redis", "redis_url": redis.url, "redis_prefix": rules.stem},
        "delivery": {**base["delivery"], "shaping_files": [str(rules)]},
        "plugins": {"enabled": ["bounce_classes"]},
    }


def send_through(nodes: tuple[GatewayProcess, ...], count: int, domain: str) -> None:
    """`count` messages through each node in turn, one recipient each."""
    for n in range(count):
        for node in nodes:
            message = make_message(f"fleet {n}")
            send_message(node.port, "app@sender.test", [f"r{n}@{domain}"], message)


def fleet_gauges(node: GatewayProcess) -> tuple[float, float]:
    """gateway_policy_store_up and gateway_fleet_limits_shared as /metrics has them."""
    status, text = node.admin("GET", "/metrics")
    assert status == 200
    found = dict(
        line.split()
        for line in text.splitlines()
        if line.startswith("gateway_")
        and line.split()[0] in ("gateway_policy_store_up", "gateway_fleet_limits_shared")
    )
    return float(found["gateway_policy_store_up"]), float(found["gateway_fleet_limits_shared"])


def test_two_nodes_stay_under_one_site_rate_and_fall_back_to_local_limits(
    tmp_path: Path, base_config: dict[str, Any], mx_port: int, redis: RedisServer
) -> None:
    """site_message_rate 10/s: 60 messages through two nodes take about 5 s
    together (each alone at 10/s would finish in 2 s). With Redis gone each
    node holds the rate alone, mail still flows, and /metrics says so."""
    rule = '[domain."good.test"]\nsite_message_rate = "10/s"\n'
    config = shaped_fleet(base_config, redis, tmp_path / "rate.toml", rule)
    with two_nodes(tmp_path, config, Receiver(MX["good1"], mx_port)) as (mx, a, b):
        assert fleet_gauges(a) == (1.0, 1.0)
        send_through((a, b), 30, "good.test")
        got = mx.wait_for(60, timeout=30)
        times = sorted(m.at for m in got)
        # 10 at once (the burst), then 10 a second for the 50 others.
        assert times[-1] - times[0] >= 4.5
        # After the first second (the burst plus a second's worth), never
        # much over 10 in any second across both nodes.
        later = [s for s in times if s >= times[0] + 1.0]
        per_second = max(sum(1 for t in times if s <= t < s + 1.0) for s in later)
        assert per_second <= 12

        redis.kill()
        send_through((a,), 10, "good.test")  # Redis gone: a's own limiter
        mx.wait_for(70, timeout=30)
        assert a.wait_event("fleet_limits_local")["error"]
        a.wait_event("store_unavailable")
        assert fleet_gauges(a) == (0.0, 0.0)


@pytest.mark.parametrize("limit", ["site_max_connections", "max_connections"])
def test_two_nodes_share_a_connection_limit(
    tmp_path: Path, base_config: dict[str, Any], mx_port: int, redis: RedisServer, limit: str
) -> None:
    """A slow MX never sees more than two connections from both nodes
    together (each alone would open two or more): site_max_connections 2
    across the fleet, or max_connections 2 per source and site for nodes
    sending from one address."""
    rule = f'[domain."slowconn.test"]\n{limit} = 2\n'
    config = shaped_fleet(base_config, redis, tmp_path / f"{limit}.toml", rule)
    with two_nodes(tmp_path, config, Receiver(MX["slowconn"], mx_port, data_delay=0.3)) as (
        slow,
        a,
        b,
    ):
        send_through((a, b), 12, "slowconn.test")
        slow.wait_for(24, timeout=60)
        assert slow.most_open_connections == 2
        assert a.events("delivered")  # both nodes took part
        assert b.events("delivered")


def delivery_seconds(mx: Receiver, count: int) -> float:
    times = sorted(m.at for m in mx.wait_for(count, timeout=30))
    return times[-1] - times[0]


@pytest.mark.parametrize(
    ("rule", "count"),
    [
        ('message_rate = "10/s"', 30),
        ('connection_rate = "5/s"\nmax_messages_per_connection = 1', 15),
    ],
    ids=["message_rate", "connection_rate"],
)
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "not_shared"])
def test_nodes_sending_from_one_address_share_its_rates(
    tmp_path: Path,
    base_config: dict[str, Any],
    mx_port: int,
    redis: RedisServer,
    rule: str,
    count: int,
    shared: bool,
) -> None:
    """A source's rates toward a site are what the receiver sees from one IP:
    two nodes on one host sending from it stay under them together (a burst
    of a second's worth, then the rate: about 5 s for both cases). With
    share_lane_limits off each node holds them alone and they finish in
    about half the time."""
    config = shaped_fleet(
        base_config, redis, tmp_path / "lane.toml", f'[domain."good.test"]\n{rule}\n'
    )
    config["delivery"]["share_lane_limits"] = shared
    with two_nodes(tmp_path, config, Receiver(MX["good1"], mx_port)) as (mx, a, b):
        send_through((a, b), count, "good.test")
        took = delivery_seconds(mx, 2 * count)
        if shared:
            assert took >= 4.5
        else:
            assert took < 3.5  # each node: 2 s after its burst
        assert a.events("delivered")
        assert b.events("delivered")


def test_two_nodes_share_one_warmup_cap(
    tmp_path: Path, base_config: dict[str, Any], mx_port: int, redis: RedisServer
) -> None:
    """Source a is on day 1 of warm-up (10 a day) on both nodes; 15 messages
    through each: together they send at most 10 from a (each alone would send
    10), and the rest go from the warm source b. Each node takes mail in
    through an ingress worker, which must take no share of the cap."""
    config = {
        **base_config,
        "store": {"backend": "redis", "redis_url": redis.url, "redis_prefix": "warmup-fleet"},
        "egress": {
            "sources": [
                {"name": "a", "address": "127.0.0.31"},
                {"name": "b", "address": "127.0.0.32"},
            ],
            "pools": [{"name": "ab", "sources": {"a": 1, "b": 1}}],
            "default_pool": "ab",
        },
        "delivery": {**base_config["delivery"], "max_messages_per_connection": 1},
        "node": {"ingress_processes": 1},
        "plugins": {"enabled": ["warmup"]},
        "plugin": {"warmup": {"sources": ["a"], "schedule": [10, 100], "providers": ["other"]}},
    }
    with two_nodes(tmp_path, config, Receiver(MX["good1"], mx_port)) as (mx, a, b):
        send_through((a, b), 15, "good.test")
        got = mx.wait_for(30, timeout=30)
        from_a = sum(1 for m in got if m.peer == "127.0.0.31")
        # Never over the cap; under it by at most the blocks (2) the nodes hold.
        assert 6 <= from_a <= 10
        assert a.events("delivered")
        assert b.events("delivered")
        counts = redis_client.Redis.from_url(redis.url).hgetall("warmup-fleet:ns:warmup-count")
        taken = sum(json.loads(raw)["r"]["n"] for raw in counts.values())
        assert from_a <= taken <= from_a + 2 * 2  # shares taken by the delivering processes only


def test_a_complaint_taken_by_one_node_throttles_mail_sent_by_another(
    tmp_path: Path, base_config: dict[str, Any], mx_port: int, redis: RedisServer
) -> None:
    """Node a delivers three messages; the complaint about one of them reaches
    node b, which finds the message in the shared sent index. The window's
    counts are the fleet's (1 complaint / 3 delivered, over the 10% limit), so
    both nodes suspend the sender domain."""
    config = {
        **base_config,
        "store": {"backend": "redis", "redis_url": redis.url, "redis_prefix": "complaint-fleet"},
        "smtp": {"relay_networks": ["127.0.0.1/32"]},
        "feedback": {
            "fbl_addresses": ["fbl@bounces.sender.test"],
            "complaint_min_delivered": 3,
            "complaint_warn": 0.05,
            "complaint_limit": 0.1,
        },
        "plugins": {"enabled": ["bounce_classes"]},
    }
    with two_nodes(tmp_path, config, Receiver(MX["good1"], mx_port)) as (mx, a, b):
        for n in range(3):
            message = make_message(f"fleet {n}")
            send_message(a.port, "app@sender.test", [f"r{n}@good.test"], message)
        original = mx.wait_for(3)[0]
        time.sleep(1.5)  # a's sent index and counts reach Redis once a second
        report = reports.arf(original.content, None)
        taken = send_message(b.port, "", ["fbl@bounces.sender.test"], report, source=OUTSIDER)
        assert taken.data_reply == "250 2.0.0 Report received"
        for node in (b, a):
            throttle = node.wait_event("complaint_throttle", kind="sender_domain")
            assert (throttle["action"], throttle["stream"]) == ("suspend", "sender.test")


def test_two_nodes_on_one_host_share_the_smtp_port_and_each_delivers_its_own(
    tmp_path: Path, base_config: dict[str, Any], mx_port: int, redis: RedisServer
) -> None:
    """Delivery beyond one queue manager on one host: two nodes (each its own
    data directory and queue manager, one ingress worker each) listen on the
    same SMTP address; the kernel spreads connections over both, and each node
    delivers what it accepted, once."""
    config = {
        **base_config,
        "store": {"backend": "redis", "redis_url": redis.url, "redis_prefix": "one-host"},
        "node": {"ingress_processes": 1},
        "plugins": {"enabled": ["suppression"]},
    }
    with (
        Receiver(MX["good1"], mx_port) as mx,
        GatewayProcess(tmp_path / "a", config) as a,
        GatewayProcess(tmp_path / "b", config, port=a.port) as b,
    ):
        for node in (a, b):
            node.wait_event("worker_started")
        rcpts = [f"r{n}@good.test" for n in range(40)]
        for rcpt in rcpts:
            assert send_message(a.port, "app@sender.test", [rcpt], make_message("x")).qid
        got = mx.wait_for(40)
        assert sorted(r for m in got for r in m.rcpt_tos) == sorted(rcpts)  # each once
        by_a, by_b = (len(node.events("received")) for node in (a, b))
        assert by_a + by_b == 40
        assert by_a > 0  # both queue managers delivered some
        assert by_b > 0
        status, _ = b.admin("POST", "/suppression", {"address": "r0@good.test"})
        assert status == 200
        refused = until(
            lambda: send_message(a.port, "app@sender.test", ["r0@good.test"], make_message("y")),
            lambda r: r.qid is None,
        )
        assert refused.refused  # one list, whichever node answers


def test_a_fast_rate_is_taken_from_redis_in_blocks(redis: RedisServer) -> None:
    """Two nodes' FleetLimits spending one 200/s rate for a second: together
    no more than the burst and the rate allow (plus the blocks in hand), and
    with one Redis call per several messages rather than per message."""

    async def spend() -> tuple[int, int, float]:
        limits = [FleetLimits(redis.url, "blocks"), FleetLimits(redis.url, "blocks")]
        calls = 0
        for limit in limits:
            script = limit._script

            async def counted(*args: Any, _script: Any = script, **kwargs: Any) -> Any:
                nonlocal calls
                calls += 1
                return await _script(*args, **kwargs)

            limit._script = counted
        taken = 0
        start = time.monotonic()

        async def node(limit: FleetLimits) -> None:
            nonlocal taken
            while time.monotonic() - start < 1.0:
                wait = await limit.reserve("lane:x:site", "200/s", time.time(), local=False)
                if wait:
                    await asyncio.sleep(wait)
                else:
                    taken += 1

        await asyncio.gather(*(node(limit) for limit in limits))
        elapsed = time.monotonic() - start
        for limit in limits:
            await limit.close()
        return taken, calls, elapsed

    taken, calls, elapsed = asyncio.run(spend())
    # The burst (200) at once, then 200 a second; each node may hold a block of 10.
    assert 200 + 150 * elapsed <= taken <= 200 + 200 * elapsed + 2 * 10
    assert calls <= taken / 2  # one a message without blocks


def test_a_suspension_through_one_node_holds_on_every_node(
    tmp_path: Path, base_config: dict[str, Any], mx_port: int, redis: RedisServer
) -> None:
    """An operator suspends a site through node a: node b holds its mail for
    that site too (within about a second); a resume through b lifts it on
    both, and b's held mail goes out. A suspension made while Redis is away
    reaches the other node once Redis is back."""
    site = {"site": "mx1.good.test,mx2.good.test"}  # good.test's MX hosts (MX rollup)

    def holds(node: GatewayProcess) -> list[dict[str, Any]]:
        status, body = node.admin("GET", "/admin/holds")
        assert status == 200
        return [h for h in body if h["scope"] == site]

    config = fleet_config(base_config, redis)
    with two_nodes(tmp_path, config, Receiver(MX["good1"], mx_port)) as (mx, a, b):
        status, _ = a.admin("POST", "/admin/suspend", {"scope": site, "reason": "maintenance"})
        assert status == 200
        assert until(lambda: holds(b), bool, 3)
        assert holds(b)[0]["reason"] == "maintenance"
        send_through((b,), 3, "good.test")
        time.sleep(1.5)
        assert mx.messages == []  # held on b, though suspended through a

        status, _ = b.admin("POST", "/admin/resume", {"scope": site})
        assert status == 200
        assert len(mx.wait_for(3, timeout=10)) == 3
        assert not until(lambda: holds(a), lambda found: not found, 3)

        # Suspended through a while Redis is away: a holds at once, and b once
        # Redis is back and a's write, retried each second, lands.
        redis.kill()
        a.wait_event("store_unavailable")
        status, _ = a.admin("POST", "/admin/suspend", {"scope": site, "reason": "outage"})
        assert status == 200
        assert holds(a)
        assert a.wait_event("background_failed", task="holds-sync")["error"]
        redis.start()
        assert until(lambda: holds(b), bool)
        assert holds(b)[0]["reason"] == "outage"


def test_each_node_sends_its_own_webhook_events_once(
    tmp_path: Path, base_config: dict[str, Any], mx_port: int, redis: RedisServer
) -> None:
    """Both nodes keep their webhook backlogs in the one Redis while the
    endpoint is down: once it is back every delivery is reported once, none
    lost to or sent twice by the other node."""
    hooked = Hooked()  # answers 500 until told otherwise
    url = f"http://127.0.0.1:{hooked.port}/events"
    webhook = {"name": "app", "url": url, "secret": "s" * 24, "events": ["delivered"]}
    config = {**fleet_config(base_config, redis), "webhooks": [webhook]}
    try:
        with two_nodes(tmp_path, config, Receiver(MX["good1"], mx_port)) as (mx, a, b):
            send_through((a, b), 10, "good.test")
            mx.wait_for(20)
            time.sleep(2)  # both backlogs written (once a second), none sent
            hooked.status = 200

            def reported() -> list[str]:
                return [e["qid"] for batch, _, _ in hooked.received for e in batch["events"]]

            until(reported, lambda qids: len(qids) >= 20)
            time.sleep(1.5)  # a second flush would show a duplicate
            qids = [e["qid"] for node in (a, b) for e in node.events("delivered")]
            assert sorted(reported()) == sorted(qids)
            assert len(set(qids)) == 20
    finally:
        hooked.server.shutdown()
