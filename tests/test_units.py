"""Pieces in isolation: the Rust bindings, the DSN builder, backoff, plugin
notifications, the aiosmtpd patches (the spool's are in test_spool.py)."""

from __future__ import annotations

import asyncio
import email
import gc
import io
import json
import logging
import ssl
import time
from pathlib import Path

import aiosmtpd.smtp
import pytest
from aiosmtpd.smtp import SMTP
from prometheus_client import CollectorRegistry, Histogram

from gateway import _core, aiosmtpd_patches, hookimpl, json_lines
from gateway.auth import Authenticator
from gateway.config import Config, RetryConfig
from gateway.delivery.dsn import Failure, build_dsn
from gateway.delivery.idle import IdleSessions
from gateway.metrics import BATCH_SECONDS, BatchedObserver
from gateway.plugin_host import PluginHost
from gateway.scheduler import RetryScheduler
from gateway.smtp_server import GatewaySMTP, make_server_factory
from gateway.spool import Envelope
from gateway.testing.certs import issue
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


def test_plugin_notifications_run_plain_hooks_at_once_and_return_async_ones() -> None:
    """PluginHost.notify: synchronous implementations run before it returns
    (no task per delivery), async ones only when its coroutine is awaited, and
    a failing one stops neither."""
    heard: list[str] = []

    class Plain:
        @hookimpl
        def delivery_delivered(self, delivery: object) -> None:
            heard.append("plain")

    class Broken:
        @hookimpl
        def delivery_delivered(self, delivery: object) -> None:
            raise RuntimeError("plugin bug")

    class Waits:
        @hookimpl
        async def delivery_delivered(self, delivery: object) -> None:
            await asyncio.sleep(0)
            heard.append("async")

    host = PluginHost(Config(), {"a": Broken(), "b": Plain(), "c": Waits()})
    pending = host.notify("delivery_delivered", delivery=object())
    assert heard == ["plain"]
    assert pending is not None
    asyncio.run(pending)
    assert heard == ["plain", "async"]
    assert PluginHost(Config(), {"b": Plain()}).notify("delivery_delivered", delivery=1) is None
    assert heard == ["plain", "async", "plain"]


def test_aiosmtpd_command_logging_is_skipped_when_off_and_still_masks_auth() -> None:
    aiosmtpd_patches.install()
    log = logging.getLogger("mail.log")
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    log.addHandler(handler)
    old_level = log.level
    try:
        log.setLevel(logging.WARNING)
        aiosmtpd.smtp.sanitized_log(log.info, "%r >> %r", "peer", b"AUTH PLAIN c2VjcmV0\r\n")
        assert buffer.getvalue() == ""
        log.setLevel(logging.INFO)
        aiosmtpd.smtp.sanitized_log(log.info, "%r >> %r", "peer", b"AUTH PLAIN c2VjcmV0\r\n")
        assert "AUTH PLAIN ********" in buffer.getvalue()
        assert "c2VjcmV0" not in buffer.getvalue()
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)


class _AcceptingPolicy:
    """A session policy that lets everything through and keeps nothing."""

    auth = Authenticator(Config().smtp.auth, PluginHost(Config(), plugins={}))
    in_data = 0

    async def on_connect(self, session: object) -> None:
        return None

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        return "250 OK"


def test_a_session_binds_its_commands_on_use_and_still_lists_them_all() -> None:
    async def scenario() -> GatewaySMTP:
        return make_server_factory(_AcceptingPolicy(), Config())()

    server = asyncio.run(scenario())
    assert list(server._handle_hooks) == ["DATA"]  # aiosmtpd saw the policy's hook
    noop = server._smtp_methods.get("NOOP")
    assert callable(noop)
    assert server._smtp_methods.get("NOPE") is None
    listed = dict(server._smtp_methods.items())  # HELP's list: every command, bound
    assert {"EHLO", "MAIL", "RCPT", "DATA", "QUIT"} <= set(listed)
    assert all(method.__self__ is server for method in listed.values())


async def _reply(reader: asyncio.StreamReader) -> bytes:
    """One SMTP reply, all its lines."""
    lines = [await reader.readline()]
    while lines[-1][3:4] == b"-":
        lines.append(await reader.readline())
    return b"".join(lines)


def test_a_finished_session_leaves_no_cycles_for_the_collector(tmp_path: Path) -> None:
    """When a session ends, by QUIT (in clear or after STARTTLS) or by the
    client going away mid-session, reference counting frees its objects at
    once: none is left in a cycle for the cyclic garbage collector (~45
    objects per connection, when they were)."""
    certificate = issue(tmp_path, ["gateway.test"])
    client_tls = ssl.create_default_context(cafile=str(certificate.cert))
    client_tls.check_hostname = False

    async def transaction(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for command, code in [
            (b"EHLO client.test", b"250"),
            (b"MAIL FROM:<a@sender.test>", b"250"),
            (b"RCPT TO:<b@rcpt.test>", b"250"),
            (b"DATA", b"354"),
            (b"Subject: x\r\n\r\nbody\r\n.", b"250"),
            (b"QUIT", b"221"),
        ]:
            writer.write(command + b"\r\n")
            assert (await _reply(reader)).startswith(code)
        assert await reader.read() == b""  # the server closed the connection
        writer.close()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        factory = make_server_factory(
            _AcceptingPolicy(), Config(), tls=certificate.server_context()
        )
        listener = await loop.create_server(factory, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert (await _reply(reader)).startswith(b"220")
        await transaction(reader, writer)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await _reply(reader)
        writer.write(b"EHLO client.test\r\nSTARTTLS\r\n")
        await _reply(reader)
        assert (await _reply(reader)).startswith(b"220")
        await writer.start_tls(client_tls)
        await transaction(reader, writer)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await _reply(reader)
        writer.write(b"EHLO client.test\r\nMAIL FROM:<a@sender.test>\r\n")
        await _reply(reader)
        await _reply(reader)
        writer.close()  # gone mid-transaction, without QUIT
        for _ in range(100):  # until connection_lost has run, and the task after it
            await asyncio.sleep(0.01)
            if not GatewaySMTP.sessions:
                break
        await asyncio.sleep(0.05)
        listener.close()
        await listener.wait_closed()

    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector finds is kept for us to see
    try:
        asyncio.run(scenario())
        gc.collect()
        left = [o for o in gc.garbage if isinstance(o, GatewaySMTP)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert left == []


def test_an_arrival_wakes_one_idle_connection_the_last_idle_first() -> None:
    async def scenario() -> list[object]:
        idle = IdleSessions()
        first = asyncio.create_task(idle.wait("site", 5))
        await asyncio.sleep(0)
        second = asyncio.create_task(idle.wait("site", 5))
        other = asyncio.create_task(idle.wait("elsewhere", 0.05))
        await asyncio.sleep(0)
        idle.arrived("site")
        await asyncio.sleep(0)
        woken = (first.done(), second.done() and second.result())
        timed_out = await other  # nothing arrived for it: False after its timeout
        idle.stop()  # the one still waiting is let go
        return [woken, timed_out, await first]

    assert asyncio.run(scenario()) == [(False, True), False, False]


def test_batched_observations_add_up_to_what_observe_gives() -> None:
    registry = CollectorRegistry()
    direct = Histogram("direct", "", buckets=(0.001, 0.01, 0.1), registry=registry)
    batched = Histogram("batched", "", buckets=(0.001, 0.01, 0.1), registry=registry)
    amounts = [0.0005, 0.001, 0.002, 0.01, 0.05, 0.5, 7.0, 0.001]

    def samples(name: str) -> dict[tuple[str, str], float]:
        return {
            (s.name.removeprefix(name), s.labels.get("le", "")): s.value
            for metric in registry.collect()
            if metric.name == name
            for s in metric.samples
            if not s.name.endswith("_created")
        }

    async def scenario() -> tuple[dict[tuple[str, str], float], dict[tuple[str, str], float]]:
        observer = BatchedObserver(batched)
        for amount in amounts:
            direct.observe(amount)
            observer.observe(amount)
        before = samples("batched")  # held until the batch is added
        await asyncio.sleep(BATCH_SECONDS + 0.2)
        return before, samples("batched")

    before, after = asyncio.run(scenario())
    assert before[("_count", "")] == 0
    assert after == samples("direct")
    assert after[("_bucket", "0.001")] == 3  # an amount on a bound counts in that bucket


def test_json_lines_write_what_the_standard_json_module_writes() -> None:
    record = {
        "qid": "0123456789abcdef",
        "sender": "jörg@exämple.test",
        "recipients": ["a@b.test", "c@d.test"],
        "time_queued": 1796667100.549,
        "size": 2300,
        "next_attempt": None,
        "flags": [True, False],
        "nested": {"i": 3, "r": "250 2.0.0 Ok"},
        "path": Path("/var/spool/x"),  # through default=str
        7: "an int key",
    }
    standard = json.dumps(record, separators=(",", ":"), ensure_ascii=False, default=str)
    assert json_lines.dumps(record) == standard.encode()
    assert json_lines.dumps_line(record) == standard.encode() + b"\n"
    assert json_lines.loads(json_lines.dumps(record)) == json.loads(standard)
