"""The delivery engine's lanes and holds, driven directly: which source may
open a connection to a site (connection rate, caps, suspensions), and the
admin primitives issue 7 puts an API on: suspend and resume a site, provider,
source, tenant or campaign; list queues; explain why a message waits."""

from __future__ import annotations

import time
from pathlib import Path

from gateway.config import Config
from gateway.delivery.engine import DeliveryEngine
from gateway.delivery.holds import Scope
from gateway.delivery.resolver import MxHost, MxResolver
from gateway.scheduler import Job
from gateway.spool import Envelope, RecipientState, Spool, SpooledMessage

YAHOO = [MxHost("mta5.am0.yahoodns.net", 1, ("127.0.0.1",))]
SITE = "mta5.am0.yahoodns.net"


def engine_with_queued_mail(tmp_path: Path, tenant: str = "", campaign: str = "") -> DeliveryEngine:
    config = Config()
    engine = DeliveryEngine(config, Spool(tmp_path), MxResolver(config.dns))
    engine._resolver._cache["yahoo.com"] = (time.monotonic() + 60, YAHOO)
    for n in range(2):
        qid = f"06H0TEST0000000{n}"
        env = Envelope(qid, "app@sender.test", ["ann@yahoo.com"], time.time())
        env.tenant, env.campaign = tenant, campaign
        engine._messages[qid] = SpooledMessage(env, [RecipientState("ann@yahoo.com")])
        engine._enqueue("yahoo.com", YAHOO, [Job(qid, "yahoo.com", [0], tenant, campaign)])
    return engine


def why(engine: DeliveryEngine) -> str | None:
    explained = engine.explain("06H0TEST00000000")
    assert explained is not None
    reason: str | None = explained["recipients"][0].get("why")
    return reason


def test_site_and_provider_suspensions_stop_connections(tmp_path: Path) -> None:
    engine = engine_with_queued_mail(tmp_path)
    (row,) = engine.queues()
    assert (row["site"], row["provider"], row["ready"], row["held_until"]) == (
        SITE,
        "yahoo",
        2,
        None,
    )
    assert row["oldest"] is not None
    assert row["oldest"] >= 0
    until = time.time() + 600
    engine.suspend(Scope(provider="yahoo"), until)
    engine._dispatch()  # a suspended provider gets no connection
    assert engine._total_active == 0
    assert engine.queues()[0]["held_until"] == until
    assert why(engine) == "suspended by an operator (provider=yahoo)"
    assert engine.resume(Scope(provider="yahoo"))
    assert not engine.resume(Scope(provider="yahoo"))  # nothing left to lift
    engine.suspend(Scope(site=SITE), until)
    assert why(engine) == f"suspended by an operator (site={SITE})"
    engine.resume(Scope(site=SITE))
    assert engine.queues()[0]["held_until"] is None
    assert why(engine) is None
    assert engine.explain("nope") is None


def test_a_suspended_source_is_skipped_and_with_none_left_the_site_waits(tmp_path: Path) -> None:
    engine = engine_with_queued_mail(tmp_path)
    (source,) = engine.sources.sources
    rules = engine._rules[SITE]
    now = time.time()
    engine.suspend(Scope(site=SITE, source=source.name), now + 600)
    assert engine._pick_source(SITE, rules, now) is None
    assert engine.queues()[0]["held_until"] is None  # the site itself is not held
    engine.resume(Scope(site=SITE, source=source.name))
    assert engine._pick_source(SITE, rules, now) == source


def test_a_source_cap_makes_its_lane_wait(tmp_path: Path) -> None:
    engine = engine_with_queued_mail(tmp_path)
    (source,) = engine.sources.sources
    rules = engine._rules[SITE]
    engine.sources.set_cap(source.name, "1/h", provider="yahoo")
    now = time.time()
    assert engine._send_wait((source.name, SITE), rules, now) == (0.0, "message rate 100/s")
    engine.sources.take_cap(source.name, "yahoo", now)
    wait, reason = engine._send_wait((source.name, SITE), rules, now)
    assert 3599 < wait <= 3600
    assert reason == "source cap 1/h to yahoo"
    assert engine._pick_source(SITE, rules, now) is None
    assert engine._lanes(SITE)[source.name]["why"] == "source cap 1/h to yahoo"
    engine.sources.set_cap(source.name, None, provider="yahoo")


def test_a_suspended_tenant_goes_back_to_the_scheduler_until_the_hold_ends(
    tmp_path: Path,
) -> None:
    engine = engine_with_queued_mail(tmp_path, tenant="shop", campaign="nov")
    until = time.time() + 600
    engine.suspend(Scope(tenant="shop"), until)
    assert engine.queues() == [] or engine.queues()[0]["ready"] == 0
    assert engine.scheduled() == {
        "jobs": 2,
        "next_attempt": until,
        "domains": {"yahoo.com": {"jobs": 2, "next_attempt": until}},
    }
    assert why(engine) == "suspended by an operator (tenant=shop)"
    # A campaign hold at one site only covers that site.
    engine.resume(Scope(tenant="shop"))
    engine.suspend(Scope(site="elsewhere", campaign="nov"), until)
    assert why(engine) is None


def test_the_connection_rate_spaces_new_connections(tmp_path: Path) -> None:
    engine = engine_with_queued_mail(tmp_path)
    engine._rules[SITE].connection_rate = "2/m"  # a burst of 2, then one per 30 s
    now = time.time()
    picks = [engine._pick_source(SITE, engine._rules[SITE], now) for _ in range(3)]
    assert picks[0] is not None
    assert picks[1] is not None
    assert picks[2] is None
    lane = engine._lanes(SITE)[picks[0].name]
    assert lane["why"] == "connection rate 2/m"
    assert 29 < lane["waits_until"] - now <= 30
