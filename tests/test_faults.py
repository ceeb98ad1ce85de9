"""Faults on both sides: a receiving MX that fails in every way and then
recovers, one that refuses some recipients only, and a spool whose
filesystem fills up (a small tmpfs) and then gets space back."""

from __future__ import annotations

import contextlib
import smtplib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway.spool import MAGIC
from gateway.testing import GatewayProcess, Receiver
from gateway.testing.flaky import FlakyMx
from tests.helpers import make_message, send
from tests.zones import MX


def test_an_mx_that_fails_every_way_gets_the_message_once_it_recovers(
    tmp_path: Path, base_config: dict[str, Any], mx_port: int
) -> None:
    script = ["greeting-421", "drop-mid-data", "silent-after-data", "rcpt-452", "data-451"]
    config = {
        **base_config,
        "delivery": {
            **base_config["delivery"],
            "idle_timeout": 0,
            "timeouts": {**base_config["delivery"]["timeouts"], "data_done": "2s"},
        },
    }
    with (
        FlakyMx(MX["slow"], mx_port, script) as mx,  # type: ignore[arg-type]
        GatewayProcess(tmp_path / "gw", config) as gw,
    ):
        qid = send(gw.port, "app@sender.test", ["ann@slow.test"])
        gw.wait_event("delivered", qid=qid, timeout=60)
        gw.wait_event("finished", qid=qid)
    deferrals = [e for e in gw.events("deferred") if e["qid"] == qid]
    assert [e["attempts"] for e in deferrals] == [1, 2, 3, 4, 5]
    replies = " | ".join(e["reply"] for e in deferrals)
    for expected in ("421 4.3.2", "451 4.3.0 Local error", "452 4.5.3"):
        assert expected in replies
    assert mx.faults_seen[:6] == [*script, "ok"]
    assert [m.rcpt_tos for m in mx.messages] == [["ann@slow.test"]]  # once, not per try
    assert not gw.events("bounced")


def test_an_mx_refusing_some_recipients_bounces_only_those(
    tmp_path: Path, base_config: dict[str, Any], mx_port: int
) -> None:
    def refuse(address: str) -> str | None:
        return "550 5.1.1 No such user" if address.startswith("gone") else None

    with (
        FlakyMx(MX["slow"], mx_port, [], rcpt_policy=refuse) as mx,
        Receiver(MX["sender"], mx_port) as sender_mx,
        GatewayProcess(tmp_path / "gw", base_config) as gw,
    ):
        rcpts = ["ann@slow.test", "gone@slow.test", "bob@slow.test"]
        qid = send(gw.port, "app@sender.test", rcpts)
        gw.wait_event("finished", qid=qid)
        (dsn,) = sender_mx.wait_for(1)
    assert [sorted(m.rcpt_tos) for m in mx.messages] == [["ann@slow.test", "bob@slow.test"]]
    assert b"gone@slow.test" in dsn.content
    assert b"550 5.1.1 No such user" in dsn.content


X_LINES, Y_LINES = b"x" * 78 + b"\r\n", b"y" * 78 + b"\r\n"


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` (the tests run as root)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_spool_answers_452_keeps_what_it_has_and_recovers(
    tmp_path: Path, base_config: dict[str, Any], mx_port: int
) -> None:
    workdir = tmp_path / "gw"
    config = {**base_config, "smtp": {"min_free_space": 1024 * 1024}}
    first = make_message("kept") + X_LINES * 15_000  # 1.2 MB
    second = make_message("too big for what is left") + Y_LINES * 19_000  # 1.5 MB
    with small_filesystem(workdir / "data" / "spool", "2600k") as spool:
        gw = GatewayProcess(workdir, config)
        with gw.start():
            send(gw.port, "app@sender.test", ["ann@down.test"], first)
            with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
                client.ehlo("client.test")
                # No SIZE declared: MAIL passes the reserve check, the write
                # runs out of space, and the client is told to come back.
                assert client.mail("app@sender.test")[0] == 250
                assert client.rcpt("bob@down.test")[0] == 250
                code, reply = client.data(second)
                assert (code, reply) == (452, b"4.3.1 Insufficient system storage; try again later")
                # With SIZE declared, MAIL is refused before any data is sent.
                code, reply = client.mail("app@sender.test", [f"SIZE={len(second)}"])
                assert (code, reply) == (452, b"4.3.1 Insufficient system storage; try again later")
                assert list((spool / "tmp").iterdir()) == []  # no half-written file left
                # Space comes back: the same client gets through.
                subprocess.run(["mount", "-o", "remount,size=8m", str(spool)], check=True)
                assert client.mail("app@sender.test", [f"SIZE={len(second)}"])[0] == 250
                assert client.rcpt("bob@down.test")[0] == 250
                assert client.data(second)[0] == 250
            assert gw.wait_event("spool_failed")["full"] is True
            assert gw.events("spool_low_space")
            with Receiver(MX["down"], mx_port) as down:
                got = down.wait_for(2, timeout=30)
        queue = [p for p in (spool / "queue").iterdir() if p.suffix != ".log"]
        assert all(p.read_bytes().startswith(MAGIC) for p in queue)
    bodies = {tuple(m.rcpt_tos): m.content for m in got}
    assert bodies[("ann@down.test",)].endswith(X_LINES * 15_000)
    assert bodies[("bob@down.test",)].endswith(Y_LINES * 19_000)
