"""The pieces of the built-in policies that need no network: bounce classes of
real provider replies, the policy store, consent rules, unsubscribe tokens,
warm-up verdicts."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
from gateway_policies import bounce_classes, unsubscribe, warmup
from gateway_policies.consent import Consent, ConsentSettings

from gateway.store import StoreUnavailable
from gateway.store.sqlite import SqliteStore

RULES = bounce_classes.load_rules(bounce_classes.SHIPPED_RULES)


# status | expected class | the reply, as providers send it
REPLIES = """
5.1.1  | invalid-recipient | 550 5.1.1 The email account that you tried to reach does not exist.
5.0.0  | invalid-recipient | 550 5.0.0 <x@y>: Recipient address rejected: User unknown in local
5.2.2  | mailbox-full      | 552 5.2.2 The email account that you tried to reach is over quota.
4.7.28 | rate-limit        | 421 4.7.28 Our system has detected an unusual rate of unsolicited mail
4.7.0  | rate-limit        | 421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred
5.7.1  | blocklist         | 550 5.7.1 Client host [192.0.2.1] blocked using Spamhaus
5.7.26 | auth-failure      | 550 5.7.26 Unauthenticated email is not accepted due to DMARC policy
5.7.1  | spam-block        | 554 5.7.1 Message rejected as spam by Content Filtering
5.7.1  | policy-block      | 550 5.7.1 Delivery not authorized
5.1.10 | invalid-recipient | 550 5.1.10 RESOLVER.ADR.RecipientNotFound; not found by SMTP lookup
5.1.10 | bad-domain        | 556 5.1.10 Recipient address has null MX
4.4.7  | expired           | delivery time expired
4.4.1  | transient         | connect to 192.0.2.1:25 failed: timeout
5.3.4  | content           | 552 5.3.4 Message size exceeds fixed limit
5.5.1  | protocol          | 503 5.5.1 Bad sequence of commands
"""


@pytest.mark.parametrize(
    ("status", "expected", "reply"),
    [tuple(f.strip() for f in line.split("|")) for line in REPLIES.strip().splitlines()],
)
def test_bounce_classes_of_real_replies(status: str, expected: str, reply: str) -> None:
    assert bounce_classes.classify(status, reply, RULES) == expected


def test_the_store_is_durable_reads_its_writes_and_sees_other_processes(tmp_path: Path) -> None:
    path = tmp_path / "policy.sqlite3"
    store = SqliteStore(path)

    async def writes() -> None:
        await store.put("ns", "a", {"n": 1})
        await store.put("ns", "gone", {"n": 2}, expires_at=time.time() - 1)
        await store.put_many("ns", [("b", {"n": 3}, None), ("c", {"n": 4}, None)])
        assert await store.delete("ns", "c")
        assert not await store.delete("ns", "c")

    asyncio.run(writes())
    assert store.get("ns", "a") == {"n": 1}
    assert store.get("ns", "gone") is None  # expired
    assert sorted(k for k, _ in store.scan("ns")) == ["a", "b"]
    # Another process commits: the memory copy catches up within a second, by
    # re-reading the keys that changed, not the whole namespace.
    held = store._memory["ns"]
    other = SqliteStore(path)

    async def other_writes() -> None:
        await other.put("ns", "d", {"n": 5})
        await other.delete("ns", "a")

    asyncio.run(other_writes())
    store._checked = 0.0  # as if a second had passed
    assert store.get("ns", "d") == {"n": 5}
    assert store.get("ns", "a") is None
    assert store._memory["ns"] is held  # updated in place
    # Our own write after another process's: theirs is still caught up on.
    asyncio.run(other.put("ns", "e", {"n": 6}))
    asyncio.run(store.put("ns", "f", {"n": 7}))
    store._checked = 0.0
    assert store.get("ns", "e") == {"n": 6}
    # Change rows this store never read were purged: it reloads whole.
    asyncio.run(other.put("ns", "g", {"n": 8}))
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM changes")
    asyncio.run(other.put("ns", "h", {"n": 9}))
    store._checked = 0.0
    assert (store.get("ns", "g"), store.get("ns", "h")) == ({"n": 8}, {"n": 9})
    other.close()
    store.close()
    reopened = SqliteStore(path)
    assert reopened.get("ns", "b") == {"n": 3}
    reopened.close()


def test_cold_namespaces_stay_on_disk_and_expired_rows_are_purged(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "policy.sqlite3")
    store.keep_cold("sent")

    async def writes() -> None:
        await store.put_many("sent", [(f"q{n}", {"n": n}, None) for n in range(1000)])
        await store.put("sent", "old", {"n": -1}, expires_at=time.time() - 1)
        await store.put("hot", "a", {"n": 1})
        store._purged = 0.0  # as if a minute had passed: the next write purges
        await store.put("hot", "b", {"n": 2})

    asyncio.run(writes())
    assert store.get("sent", "q7") == {"n": 7}
    assert sum(1 for _ in store.scan("sent", "q9")) == 111  # q9, q90..q99, q900..q999
    assert "sent" not in store._memory  # never loaded into memory
    assert store.get("hot", "a") == {"n": 1}
    with sqlite3.connect(tmp_path / "policy.sqlite3") as db:
        (left,) = db.execute("SELECT COUNT(*) FROM records WHERE key = 'old'").fetchone()
    assert left == 0
    store.close()


def test_consent_rules(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "p.sqlite3")
    consent = Consent()
    consent.store = store

    async def record() -> None:
        base = {"list": "shop.test", "source": "203.0.113.9"}
        await consent.record({**base, "recipient": "ann@x.test", "method": "double-opt-in"}, False)
        await consent.record({**base, "recipient": "bob@x.test", "method": "imported"}, False)
        with pytest.raises(ValueError, match="method"):
            await consent.record({**base, "recipient": "c@x.test", "method": "guessed"}, False)
        with pytest.raises(LookupError):
            await consent.record({**base, "recipient": "nobody@x.test"}, True)

    asyncio.run(record())
    # A double opt-in counts once confirmed, and not before.
    assert not consent.valid("ann@x.test", ["shop.test"])
    assert consent.valid("bob@x.test", ["shop.test"])
    asyncio.run(consent.record({"recipient": "ann@x.test", "list": "shop.test"}, True))
    assert consent.valid("ann@x.test", ["shop.test"])
    consent.settings = ConsentSettings(require_confirmation=True)
    assert consent.valid("ann@x.test", ["shop.test"])
    assert not consent.valid("bob@x.test", ["shop.test"])  # imported: not double opt-in
    consent.settings = ConsentSettings()
    consent.settings = ConsentSettings(max_age=1.0)
    store._memory["consent"]["shop.test|bob@x.test"][0]["confirmed_at"] = time.time() - 5
    assert not consent.valid("bob@x.test", ["shop.test"])
    store.close()


def test_unsubscribe_tokens_resist_tampering_and_age() -> None:
    now = time.time()
    token = unsubscribe.make_token("k" * 20, "ann@x.test", "news", "shop.test", now)
    fields = unsubscribe.read_token("k" * 20, token, 3600, now)
    assert fields is not None
    assert (fields["r"], fields["l"], fields["d"]) == ("ann@x.test", "news", "shop.test")
    assert unsubscribe.read_token("other-secret-1234", token, 3600, now) is None
    mac = token.partition(".")[2]
    swapped = unsubscribe.make_token("x" * 20, "bob@x.test", "news", "shop.test", now)
    assert (
        unsubscribe.read_token("k" * 20, swapped.partition(".")[0] + "." + mac, 3600, now) is None
    )
    assert unsubscribe.read_token("k" * 20, token, 3600, now + 7200) is None  # too old
    assert unsubscribe.read_token("k" * 20, "garbage", 3600, now) is None


def test_warmup_moves_forward_only_on_clean_used_days() -> None:
    plugin = warmup.Warmup()
    plugin.settings = warmup.WarmupSettings(sources=["a"], schedule=[100, 200, 400])

    class NoStore:
        def get(self, namespace: str, key: str) -> None:
            return None

    plugin.store = NoStore()  # type: ignore[assignment]
    day = "2026-11-22"

    def verdict(sent: int, deferred: int = 0, complaints: int = 0) -> str:
        plugin.stats[f"{day}|a"] = {"sent": sent, "deferred": deferred, "complaints": complaints}
        return plugin.judge("a", day)

    assert verdict(sent=80) == "forward"
    assert verdict(sent=10) == "hold"  # too little use of a 100 cap
    assert verdict(sent=90, deferred=12) == "hold"  # 11.8% deferred
    assert verdict(sent=80, deferred=30) == "back"  # 27% deferred
    assert verdict(sent=1000, complaints=4) == "hold"  # 0.4% complaints
    assert verdict(sent=1000, complaints=7) == "back"


class _Unreachable(SqliteStore):
    """A store whose shared backend has gone away (Redis down)."""

    def get(self, namespace: str, key: str) -> None:
        raise StoreUnavailable("gone")

    async def take_up_to(self, *args: object) -> int:
        raise StoreUnavailable("gone")


class _Context:
    def log(self, *args: object, **fields: object) -> None:
        pass

    def gauge(self, *args: object, **fields: object) -> None:
        pass


@pytest.mark.parametrize("reachable", [True, False])
def test_warmup_cap_holds_with_and_without_the_store(tmp_path: Path, reachable: bool) -> None:
    """A day's cap of 5: the node sends 5 and then waits for tomorrow, whether
    it takes its share from the store or (store unreachable) counts alone."""
    plugin = warmup.Warmup()
    plugin.settings = warmup.WarmupSettings(sources=["a"], schedule=[5, 10])
    store_type = SqliteStore if reachable else _Unreachable
    plugin.store = store_type(tmp_path / "p.sqlite3")
    plugin.context = _Context()  # type: ignore[assignment]
    now = time.time()
    day = warmup.utc_date(now)

    async def send_all() -> int:
        sent = 0
        for _ in range(50):  # bounded: each turn sends one or waits briefly
            wait = plugin.wait(day, "a", "other", now)
            if wait > warmup.REFILL_WAIT:
                break  # until midnight: the cap is spent
            if wait:
                await asyncio.sleep(0.01)
                continue
            plugin.take(day, "a", "other")
            sent += 1
        return sent

    assert asyncio.run(send_all()) == 5
    assert plugin.store_down is not reachable
    if reachable:
        assert plugin.store.get(warmup.COUNTS, f"{day}|a|other") == {"n": 5}


def test_complaints_suppress_per_sender_domain_and_users_tell_the_stream(tmp_path: Path) -> None:
    from gateway_policies.suppression import Suppression

    from gateway import EnvelopeInfo, SessionInfo

    suppression = Suppression()
    suppression.store = SqliteStore(tmp_path / "p.sqlite3")
    asyncio.run(suppression.feedback_complaint("ann@x.test", "shop.test", "06H0QID"))
    entry = suppression.lookup("ann@x.test", "shop.test")
    assert entry is not None
    assert (entry["reason"], entry["source"]) == ("complaint", "complaint 06H0QID")
    assert suppression.lookup("ann@x.test", "other.test") is None
    suppression.store.close()

    consent = Consent()
    consent.settings = ConsentSettings(
        sender_streams={"shop.test": "transactional"}, user_streams={"newsletter-app": "marketing"}
    )
    envelope = EnvelopeInfo(sender="app@shop.test")
    assert consent.stream_of_sender(SessionInfo("127.0.0.1"), envelope) == "transactional"
    assert consent.stream_of_sender(SessionInfo("127.0.0.1", user="newsletter-app"), envelope) == (
        "marketing"
    )
