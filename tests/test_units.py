"""Pieces in isolation: the Rust bindings, the DSN builder, spool recovery, backoff."""

from __future__ import annotations

import asyncio
import email
import threading
import time
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP

from gateway import _core
from gateway.config import RetryConfig
from gateway.delivery.dsn import Failure, build_dsn
from gateway.scheduler import RetryScheduler
from gateway.smtp_server import GatewaySMTP
from gateway.spool import Envelope, Spool, SpoolError
from tests.helpers import dsn_fields


def test_core_scan_normalises_and_reports() -> None:
    data, scan = _core.scan_message(b"A: b\nC: d\r\n\r\nbody\rmore\r\n")
    assert data == b"A: b\r\nC: d\r\n\r\nbody\r\nmore\r\n"
    assert (scan.bare_lf, scan.bare_cr, scan.body_offset) == (1, 1, 14)
    clean = b"A: b\r\n\r\nx\r\n"
    same, _ = _core.scan_message(clean)
    assert same is clean  # no copy for a canonical message


def test_core_dot_stuff_and_ids() -> None:
    assert _core.dot_stuff(b".a\r\n.\r\n") == b"..a\r\n..\r\n.\r\n"
    ids = {_core.new_queue_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 16 for i in ids)


def test_dsn_is_valid_rfc3464() -> None:
    env = Envelope("QID0000000000001", "s@sender.test", ["r@x.test"], time.time())
    original = b"Subject: hello\r\nFrom: s@sender.test\r\n\r\nsecret body\r\n"
    dsn = build_dsn(
        env,
        original,
        [Failure("r@x.test", "5.1.1", "550 5.1.1 unknown", "mx.x.test", time.time())],
        reporting_mta="gw.test",
        now=time.time(),
    )
    message = email.message_from_bytes(dsn)
    per_message, (rcpt,) = dsn_fields(message)
    assert per_message["Reporting-MTA"] == "dns; gw.test"
    assert rcpt["Remote-MTA"] == "dns; mx.x.test"
    assert b"secret body" not in dsn  # headers only, never the body
    assert b"Subject: hello" in dsn


def test_spool_recovery_replays_journal_and_skips_torn_line(tmp_path: Path) -> None:
    async def scenario() -> None:
        spool = Spool(tmp_path)
        env = Envelope(spool.new_qid(), "s@a.test", ["x@b.test", "y@b.test"], time.time())
        await spool.store(env, b"Subject: x\r\n\r\nhi\r\n")
        await spool.record(env.qid, [{"i": 0, "s": "delivered", "a": 1}])
        with (spool.queue / f"{env.qid}.log").open("ab") as fh:
            fh.write(b'{"i": 1, "s": "deliv')  # a crash mid-append
        (spool.tmp / "debris").write_bytes(b"half a message")
        spool.close()

    asyncio.run(scenario())
    (message,) = Spool(tmp_path).recover()
    assert [r.status for r in message.recipients] == ["delivered", "pending"]
    assert not list((tmp_path / "tmp").iterdir())


def test_spool_finishes_waiting_messages_together_and_keeps_errors_apart(
    tmp_path: Path,
) -> None:
    async def scenario() -> tuple[list[BaseException | None], list[list[str]], bytes]:
        spool = Spool(tmp_path)
        qids = []
        for n in range(5):
            env = Envelope(spool.new_qid(), "s@a.test", [f"r{n}@b.test"], time.time(), size=20)
            await spool.store(env, b"Subject: x\r\n\r\nhi\r\n")
            qids.append(env.qid)
        body = await spool.read_body(qids[0], 20)  # small: read on the loop's thread
        # One message cannot be removed: a directory stands where its file was.
        (spool.queue / qids[3]).unlink()
        (spool.queue / qids[3]).mkdir()
        (spool.queue / qids[3] / "x").touch()
        trips: list[list[str]] = []

        def counted(batch: list[str]) -> list[Exception | None]:
            trips.append(list(batch))
            return spool._finish(batch)

        spool._finishes._work = counted
        results = await asyncio.gather(*(spool.finish(q) for q in qids), return_exceptions=True)
        spool.close()
        return [r if isinstance(r, BaseException) else None for r in results], trips, body

    errors, trips, body = asyncio.run(scenario())
    assert body == b"Subject: x\r\n\r\nhi\r\n"
    assert len(trips) == 1  # one I/O trip, one directory fsync
    assert len(trips[0]) == 5
    assert [e is not None for e in errors] == [False, False, False, True, False]
    assert isinstance(errors[3], OSError)
    assert [p.name for p in (tmp_path / "queue").iterdir()] == [trips[0][3]]


def test_spool_group_commit_stores_waiting_messages_together_and_refuses_only_the_failed(
    tmp_path: Path,
) -> None:
    def body(n: int) -> bytes:
        return f"Subject: {n}\r\n\r\nhi\r\n".encode()

    async def scenario(spool: Spool) -> tuple[list[BaseException | None], list[int], list[str]]:
        trips: list[int] = []
        first_trip_may_end = threading.Event()
        first_trip_began = asyncio.Event()
        loop = asyncio.get_running_loop()

        def counted(batch: list[tuple[Envelope, bytes]]) -> list[Exception | None]:
            trips.append(len(batch))
            loop.call_soon_threadsafe(first_trip_began.set)
            first_trip_may_end.wait(5)
            return spool._store_batch(batch)

        spool._stores._work = counted
        envs = [Envelope(spool.new_qid(), "s@a.test", ["r@b.test"], time.time()) for _ in range(9)]
        (spool.tmp / envs[4].qid).write_bytes(b"debris")  # this one's file cannot be created
        first = asyncio.ensure_future(spool.store(envs[0], body(0)))
        await asyncio.wait_for(first_trip_began.wait(), 5)  # the first is on its way to disk
        rest = [asyncio.ensure_future(spool.store(e, body(n))) for n, e in enumerate(envs) if n]
        await asyncio.sleep(0.05)
        first_trip_may_end.set()
        results = await asyncio.gather(first, *rest, return_exceptions=True)
        errors = [r if isinstance(r, BaseException) else None for r in results]
        return errors, trips, [e.qid for e in envs]

    spool = Spool(tmp_path)
    errors, trips, qids = asyncio.run(scenario(spool))
    # The eight that arrived while the first was being written went together.
    assert trips == [1, 8]
    assert [e is not None for e in errors] == [i == 4 for i in range(9)]
    assert isinstance(errors[4], SpoolError)
    stored = {p.name for p in spool.queue.iterdir()}
    assert stored == {q for i, q in enumerate(qids) if i != 4}
    assert (spool.queue / qids[8]).read_bytes().endswith(body(8))

    # A directory fsync that fails refuses the whole batch, and keeps none of it.
    def broken_sync() -> None:
        raise OSError(5, "Input/output error")

    spool._dirsync.sync = broken_sync  # type: ignore[method-assign]
    errors, trips, qids = asyncio.run(scenario(spool))
    assert all(isinstance(e, SpoolError) for e in errors)
    assert not {p.name for p in spool.queue.iterdir()} & set(qids)
    spool.close()


def test_backoff_grows_and_is_capped() -> None:
    sched = RetryScheduler(RetryConfig(first_interval=60, multiplier=2, max_interval=300, jitter=0))
    assert [sched.backoff(n) for n in (1, 2, 3, 4, 5)] == [60, 120, 240, 300, 300]


@pytest.mark.parametrize(
    "arg",
    ["<a@b.test>", "<a@b.test> SIZE=10 BODY=8BITMIME", "<ann.lee+tag@mx.example.com>",
     " <x@y.z>", "<Ann@Example.TEST>  SMTPUTF8", "<a..b@c.test>", "<a@-b.test>",
     "<a@b.test.>", '<"quoted local"@b.test>', "<@route:a@b.test>", "a@b.test", "<>"],
)  # fmt: skip
def test_the_fast_address_reader_agrees_with_aiosmtpd(arg: str) -> None:
    """GatewaySMTP reads simple `<local@domain>` with a regex; it must give
    what aiosmtpd's RFC 5322 parser gives."""
    ours = GatewaySMTP.__new__(GatewaySMTP)
    theirs = SMTP.__new__(SMTP)
    ours.local_part_limit = theirs.local_part_limit = 0
    assert ours._getaddr(arg) == SMTP._getaddr(theirs, arg)
