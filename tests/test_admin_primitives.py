"""The delivery engine's admin primitives (issue 7 puts an API on them):
suspend and resume a site or provider, list queues, explain a message."""

from __future__ import annotations

import time
from pathlib import Path

from gateway.config import Config
from gateway.delivery.engine import DeliveryEngine
from gateway.delivery.resolver import MxHost, MxResolver
from gateway.scheduler import Job
from gateway.spool import Envelope, RecipientState, Spool, SpooledMessage

YAHOO = [MxHost("mta5.am0.yahoodns.net", 1, ("127.0.0.1",))]


def engine_with_queued_mail(tmp_path: Path) -> tuple[DeliveryEngine, str]:
    config = Config()
    engine = DeliveryEngine(config, Spool(tmp_path), MxResolver(config.dns))
    qid = "06H0TEST00000001"
    env = Envelope(qid, "app@sender.test", ["ann@yahoo.com"], time.time())
    engine._messages[qid] = SpooledMessage(env, [RecipientState("ann@yahoo.com")])
    engine._resolver._cache["yahoo.com"] = (time.monotonic() + 60, YAHOO)
    engine._enqueue("yahoo.com", YAHOO, [Job(qid, "yahoo.com", [0])])
    return engine, qid


def test_suspend_list_explain_resume(tmp_path: Path) -> None:
    engine, qid = engine_with_queued_mail(tmp_path)
    site = "mta5.am0.yahoodns.net"
    (row,) = engine.queues()
    assert (row["site"], row["provider"], row["ready"], row["held_until"]) == (
        site,
        "yahoo",
        1,
        None,
    )
    until = time.time() + 600
    engine.suspend("provider", "yahoo", until)
    engine._dispatch()  # a suspended provider gets no connection
    assert engine._active == {}
    (row,) = engine.queues()
    assert row["held_until"] == until
    explained = engine.explain(qid)
    assert explained is not None
    (rcpt,) = explained["recipients"]
    assert (rcpt["site"], rcpt["provider"], rcpt["why"]) == (
        site,
        "yahoo",
        "provider suspended by an operator",
    )
    engine.resume("provider", "yahoo")
    engine.suspend("site", site, until)
    rcpt = engine.explain(qid)["recipients"][0]  # type: ignore[index]
    assert rcpt["why"] == "suspended by an operator"
    engine.resume("site", site)
    assert engine.queues()[0]["held_until"] is None
    assert engine.explain("nope") is None
