"""Counting in the policy store, on both backends: two stores on one database
(two processes of a node on SQLite, two nodes on a real Redis) adding to the
same counters and sharing one budget never lose a count or overspend."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.store import PolicyStore
from gateway.store.redis_store import RedisStore
from gateway.store.sqlite import SqliteStore
from gateway.testing import RedisServer


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "redis"])
def two_stores(
    request: pytest.FixtureRequest, tmp_path: Path, redis: RedisServer
) -> Iterator[tuple[PolicyStore, PolicyStore]]:
    stores: tuple[PolicyStore, PolicyStore]
    if request.param == "sqlite":
        stores = (SqliteStore(tmp_path / "p.sqlite3"), SqliteStore(tmp_path / "p.sqlite3"))
    else:
        prefix = f"counts-{tmp_path.name}"
        stores = (RedisStore(redis.url, prefix), RedisStore(redis.url, prefix))
    yield stores
    for store in stores:
        store.close()


def test_counts_from_two_stores_add_up(two_stores: tuple[PolicyStore, PolicyStore]) -> None:
    one, two = two_stores
    later = time.time() + 3600

    async def count() -> list[int]:
        async def node(store: PolicyStore) -> None:
            for _ in range(50):
                await store.add_counts("w", [("k", {"sent": 1, "deferred": 2}, later)])

        await asyncio.gather(node(one), node(two))
        await one.add_counts("w", [("old", {"sent": 7}, time.time() - 1)])  # already expired
        totals = await two.add_counts("w", [("k", {"sent": 0}, later), ("old", {"sent": 1}, None)])
        return [totals[0]["sent"], totals[0]["deferred"], totals[1]["sent"]]

    sent, deferred, old = asyncio.run(count())
    assert (sent, deferred) == (100, 200)
    assert old == 1  # the expired count of 7 started again from nothing
    assert one.get("w", "old") == {"sent": 1} or _settles(one, "old", {"sent": 1})


def test_two_stores_never_overspend_a_shared_budget(
    two_stores: tuple[PolicyStore, PolicyStore],
) -> None:
    one, two = two_stores
    later = time.time() + 3600

    async def spend(store: PolicyStore) -> int:
        got = 0
        while granted := await store.take_up_to("cap", "day", "n", 3, 50, later):
            got += granted
        return got

    async def both() -> list[int]:
        return list(await asyncio.gather(spend(one), spend(two)))

    granted = asyncio.run(both())
    assert sum(granted) == 50  # exactly the budget, however the two interleaved
    assert asyncio.run(one.take_up_to("cap", "day", "n", 1, 50, later)) == 0
    assert asyncio.run(one.take_up_to("cap", "day", "n", 5, 52, later)) == 2  # a raised cap


def _settles(store: PolicyStore, key: str, expected: dict[str, int]) -> bool:
    """Another store's write reaches this one's memory copy within a moment."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if store.get("w", key) == expected:
            return True
        time.sleep(0.05)
    return False
