"""What a client sees at the gateway's SMTP listener: capabilities, relay
control, and clear replies for bad input that never disturb other sessions."""

from __future__ import annotations

import smtplib
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.testing import GatewayProcess
from tests.helpers import make_message, send

MAX_SIZE = 20_000


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, base_config: dict[str, Any]
) -> Iterator[GatewayProcess]:
    config = {
        **base_config,
        "smtp": {
            "max_recipients": 3,
            "max_message_size": MAX_SIZE,
            "relay_networks": ["127.0.0.1/32"],
        },
    }
    with GatewayProcess(tmp_path_factory.mktemp("ingress"), config) as gw:
        yield gw


def client(gateway: GatewayProcess, source: str | None = None) -> smtplib.SMTP:
    c = smtplib.SMTP(
        "127.0.0.1", gateway.port, timeout=10, source_address=(source, 0) if source else None
    )
    c.ehlo("client.test")
    return c


def test_ehlo_advertises_extensions(gateway: GatewayProcess) -> None:
    with client(gateway) as c:
        for ext in ("size", "8bitmime", "smtputf8", "pipelining", "enhancedstatuscodes"):
            assert c.has_extn(ext), ext
        assert c.esmtp_features["size"] == str(MAX_SIZE)
        assert c.noop()[0] == 250
        code, msg = c.rset()
        assert (code, msg[:5]) == (250, b"2.0.0")


def test_help_gives_a_command_s_syntax(gateway: GatewayProcess) -> None:
    with client(gateway) as c:
        code, reply = c.docmd("HELP", "MAIL")
        assert (code, reply) == (250, b"2.0.0 Syntax: MAIL FROM: <address> [SP <mail-parameters>]")
        code, reply = c.docmd("HELP", "NOPE")
        assert code == 501
        assert b"Supported commands:" in reply
        assert b"RCPT" in reply


def test_a_multi_line_reply_arrives_in_one_write(gateway: GatewayProcess) -> None:
    """EHLO's capabilities go out with their last line in one write (one
    client wakeup, not one per line); the first read holds the whole reply."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        assert sock.recv(4096).startswith(b"220 ")
        sock.sendall(b"EHLO client.test\r\n")
        reply = sock.recv(4096)
        lines = reply.split(b"\r\n")
        assert len(lines) > 5
        assert all(line.startswith(b"250-") for line in lines[:-2])
        assert lines[-2:] == [b"250 HELP", b""]


def test_relay_from_foreign_network_is_refused(gateway: GatewayProcess) -> None:
    before = set(gateway.spool_files())
    with client(gateway, source="127.0.0.50") as c:
        assert c.mail("app@sender.test")[0] == 250
        code, msg = c.rcpt("victim@good.test")
        assert code == 550
        assert msg.startswith(b"5.7.1")
        code, msg = c.docmd("DATA")
        assert code == 554
        assert msg.startswith(b"5.5.1")
    assert set(gateway.spool_files()) == before
    rejected = gateway.wait_event("rejected", client="127.0.0.50")
    assert rejected["reason"] == "relay_denied"


def test_250_carries_queue_id_and_logs_carry_it(gateway: GatewayProcess) -> None:
    qid = send(gateway.port, "app@sender.test", ["kim@good.test"])
    assert gateway.wait_event("received", qid=qid)["rcpts"] == 1
    assert qid in gateway.spool_files() or gateway.wait_event("delivered", qid=qid)


@pytest.mark.parametrize(
    ("commands", "expected"),
    [
        (["MAIL TO:<x@y.test>"], (501, b"5.5.4")),
        (["RCPT TO:<x@good.test>"], (503, b"5.5.1")),
        (["MAIL FROM:<a@sender.test>", "MAIL FROM:<a@sender.test>"], (503, b"5.5.1")),
        (["MAIL FROM:<a@sender.test>", "DATA"], (503, b"5.5.1")),
        ([f"MAIL FROM:<a@sender.test> SIZE={MAX_SIZE + 1}"], (552, b"5.3.4")),
        (["MAIL FROM:<a@sender.test>", "RCPT TO:<nodomain>"], (501, b"5.1.3")),
        (["BOGUS"], (500, b"5.5.2")),
        (["NOOP " + "x" * 600], (500, b"5.5.2")),
        (['MAIL FROM:()"'], (553, b"5.1.3")),  # crashed CPython's parser (found by fuzzing)
        (["MAIL FROM:<a@sender.test>", 'RCPT TO:()"'], (553, b"5.1.3")),
    ],
    ids=[
        "syntax",
        "rcpt-before-mail",
        "nested-mail",
        "data-before-rcpt",
        "size",
        "bad-rcpt",
        "unknown",
        "line-too-long",
        "hostile-sender",
        "hostile-recipient",
    ],
)
def test_bad_commands_get_clear_replies(
    gateway: GatewayProcess, commands: list[str], expected: tuple[int, bytes]
) -> None:
    with client(gateway) as c:
        reply: tuple[int, bytes] = (0, b"")
        for command in commands:
            reply = c.docmd(command)
        assert (reply[0], reply[1][:5]) == expected, reply
        assert c.noop()[0] == 250  # the session is still usable


def test_too_many_recipients_is_452(gateway: GatewayProcess) -> None:
    with client(gateway) as c:
        c.mail("app@sender.test")
        codes = [c.rcpt(f"r{i}@good.test")[0] for i in range(4)]
        assert codes == [250, 250, 250, 452]


def test_oversize_data_is_552_and_not_queued(gateway: GatewayProcess) -> None:
    before = set(gateway.spool_files())
    with client(gateway) as c:
        c.mail("app@sender.test")
        c.rcpt("big@good.test")
        code, msg = c.data(make_message(body="x" * 900 + "\r\n") * 30)
        assert (code, msg[:5]) == (552, b"5.3.4")
    assert set(gateway.spool_files()) == before


@pytest.mark.parametrize("length", [1001, 5000, 100_000])  # up to and past the read buffer
def test_data_line_too_long_is_500(gateway: GatewayProcess, length: int) -> None:
    with client(gateway) as c:
        c.mail("app@sender.test")
        c.rcpt("long@good.test")
        code, msg = c.data(b"Subject: x\r\n\r\n" + b"y" * length + b"\r\n")
        assert (code, msg[:5]) == (500, b"5.5.2")


def test_broken_session_does_not_disturb_others(gateway: GatewayProcess) -> None:
    # A client that opens a transaction, sends half a DATA and vanishes...
    rude = socket.create_connection(("127.0.0.1", gateway.port))
    rude.recv(1024)
    rude.sendall(b"EHLO rude\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<b@good.test>\r\nDATA\r\n")
    rude.sendall(b"Subject: half\r\n\r\nhalf a mess")
    # ...while a well-behaved client still gets its mail queued.
    qid = send(gateway.port, "app@sender.test", ["lee@good.test"])
    rude.close()
    assert gateway.wait_event("received", qid=qid)
    assert not [e for e in gateway.events("received") if e.get("helo") == "rude"]


def test_pipelined_client(gateway: GatewayProcess) -> None:
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    f = sock.makefile("rb")
    f.readline()
    sock.sendall(b"EHLO pipe\r\n")
    while f.readline()[3:4] == b"-":
        pass
    sock.sendall(
        b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<p1@good.test>\r\nRCPT TO:<p2@good.test>\r\nDATA\r\n"
    )
    replies = [f.readline()[:3] for _ in range(4)]
    assert replies == [b"250", b"250", b"250", b"354"]
    sock.sendall(b"From: a@sender.test\r\nSubject: piped\r\n\r\nhi\r\n.\r\nQUIT\r\n")
    assert f.readline().startswith(b"250 2.0.0 Ok: queued as ")
    assert f.readline().startswith(b"221")
    sock.close()
