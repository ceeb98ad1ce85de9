"""Restarts, kill -9 and expiry: nothing acknowledged is lost, nothing delivered
is delivered again, and what cannot be delivered comes back as a DSN."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from gateway.testing import GatewayProcess, Receiver
from tests.helpers import dsn_fields, parse, send
from tests.zones import MX


def test_restart_with_mail_queued(
    tmp_path: Path, base_config: dict[str, Any], mx_port: int
) -> None:
    gw = GatewayProcess(tmp_path, base_config).start()
    qid = send(gw.port, "app@sender.test", ["queued@down.test"])
    gw.wait_event("deferred", qid=qid)  # nothing listens at down.test's address yet
    assert gw.stop() == 0
    assert qid in gw.spool_files()
    with Receiver(MX["down"], mx_port) as down:
        gw.start()
        try:
            gw.wait_event("started", recovered=1)
            down.wait_for(1)
            gw.wait_event("finished", qid=qid)
        finally:
            gw.stop()
        assert [m.rcpt_tos for m in down.messages] == [["queued@down.test"]]
    assert gw.spool_files() == []


def test_kill_9_between_250_and_delivery(
    tmp_path: Path, base_config: dict[str, Any], mx_port: int
) -> None:
    gw = GatewayProcess(tmp_path, base_config).start()
    qids = [send(gw.port, "app@sender.test", [f"crash{i}@down.test"]) for i in range(5)]
    gw.kill()  # the 250s were sent; nothing was delivered
    with Receiver(MX["down"], mx_port) as down:
        with gw.start():
            down.wait_for(5)
            for qid in qids:
                gw.wait_event("finished", qid=qid)
        got = sorted(r for m in down.messages for r in m.rcpt_tos)
    assert got == sorted(f"crash{i}@down.test" for i in range(5))


def test_recipient_delivered_before_crash_is_not_delivered_again(
    tmp_path: Path, base_config: dict[str, Any], mx_port: int
) -> None:
    # First run: the MX takes "done@" but keeps deferring "later@".
    def first_policy(address: str, count: int) -> str | None:
        return "451 4.3.0 busy" if address.startswith("later") else None

    gw = GatewayProcess(tmp_path, base_config)
    with Receiver(MX["down"], mx_port, rcpt_policy=first_policy) as down:
        gw.start()
        qid = send(gw.port, "app@sender.test", ["done@down.test", "later@down.test"])
        gw.wait_event("delivered", qid=qid, rcpt="done@down.test")
        gw.wait_event("deferred", qid=qid, rcpt="later@down.test")
        gw.kill()
        first = list(down.messages)
    # Second run: the MX takes everything; only "later@" may arrive.
    with Receiver(MX["down"], mx_port) as down:
        with gw.start():
            gw.wait_event("finished", qid=qid)
        second = list(down.messages)
    assert [m.rcpt_tos for m in first] == [["done@down.test"]]
    assert [m.rcpt_tos for m in second] == [["later@down.test"]]


def test_expiry_sends_dsn(tmp_path: Path, base_config: dict[str, Any], mx_port: int) -> None:
    config = {**base_config, "retry": {**base_config["retry"], "max_age": "3s"}}
    always_busy = Receiver(MX["slow"], mx_port, rcpt_policy=lambda a, n: "451 4.4.5 Busy")
    sender_mx = Receiver(MX["sender"], mx_port)
    with always_busy, sender_mx, GatewayProcess(tmp_path, config) as gw:
        started = time.monotonic()
        qid = send(gw.port, "app@sender.test", ["never@slow.test"])
        expired = gw.wait_event("expired", qid=qid, timeout=20)
        assert time.monotonic() - started >= 3
        assert expired["status"] == "4.4.7"
        (dsn,) = sender_mx.wait_for(1)
    assert dsn.mail_from == ""
    per_message, (rcpt,) = dsn_fields(parse(dsn.content))
    assert per_message["X-Gateway-Queue-ID"] == qid
    assert rcpt["Final-Recipient"] == "rfc822; never@slow.test"
    assert rcpt["Action"] == "failed"
    assert rcpt["Status"] == "4.4.7"
    assert "451 4.4.5 Busy" in rcpt["Diagnostic-Code"]
    assert always_busy.offered["never@slow.test"] >= 2


def test_sigterm_finishes_cleanly_with_empty_queue(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    gw = GatewayProcess(tmp_path, base_config).start()
    assert gw.stop() == 0
    assert gw.wait_event("stopped")["queued"] == 0


def test_spool_write_failure_is_451_and_recovers(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    import shutil
    import smtplib

    with GatewayProcess(tmp_path, base_config) as gw:
        # No segment is open yet: the first store makes one, and fails (ENOTDIR).
        tmp_dir = Path(gw.config["node"]["data_dir"]) / "spool" / "segments"
        shutil.rmtree(tmp_dir)
        tmp_dir.write_bytes(b"")  # writes under spool/segments now fail, as on a bad disk
        with smtplib.SMTP("127.0.0.1", gw.port, timeout=10) as c:
            c.ehlo("client.test")
            c.mail("app@sender.test")
            c.rcpt("x@down.test")
            code, msg = c.data(b"From: a@sender.test\r\nSubject: lost?\r\n\r\nno\r\n")
            assert (code, msg[:5]) == (451, b"4.3.0")
            tmp_dir.unlink()
            tmp_dir.mkdir()
            c.mail("app@sender.test")
            c.rcpt("x@down.test")
            code, msg = c.data(b"From: a@sender.test\r\nSubject: retry\r\n\r\nyes\r\n")
            assert code == 250
        assert gw.wait_event("spool_failed")["error"]


def test_sigterm_lets_open_transaction_finish(tmp_path: Path, base_config: dict[str, Any]) -> None:
    import signal
    import socket

    gw = GatewayProcess(tmp_path, base_config).start()
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    f = sock.makefile("rb")
    f.readline()
    sock.sendall(b"EHLO c\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<late@down.test>\r\nDATA\r\n")
    while not f.readline().startswith(b"354"):
        pass
    sock.sendall(b"From: a@sender.test\r\nSubject: in flight\r\n\r\nfirst half\r\n")
    gw.send_signal(signal.SIGTERM)
    gw.wait_event("stopping")
    sock.sendall(b"second half\r\n.\r\n")
    reply = f.readline()
    assert reply.startswith(b"250 2.0.0 Ok: queued as "), reply
    qid = reply.split()[-1].decode()
    assert f.readline().startswith(b"421 4.3.2")  # then the session is closed
    sock.close()
    assert gw.stop() == 0
    assert qid in gw.spool_files()


def test_next_attempt_time_survives_restart(
    tmp_path: Path, base_config: dict[str, Any], mx_port: int
) -> None:
    """A deferred recipient is retried at its recorded time after a restart:
    not at once because the gateway started again, and not forgotten."""
    config = {**base_config, "retry": {"first_interval": "4s", "jitter": 0.0}}
    gw = GatewayProcess(tmp_path, config).start()
    qid = send(gw.port, "app@sender.test", ["later@down.test"])
    next_attempt = gw.wait_event("deferred", qid=qid)["next_attempt"]
    assert gw.stop() == 0
    with Receiver(MX["down"], mx_port), gw.start():
        gw.wait_event("started", recovered=1)
        delivered = gw.wait_event("delivered", qid=qid, timeout=20)
    assert next_attempt - 0.05 <= delivered["ts"] <= next_attempt + 3.0
