"""The outbound SMTP client against a receiver offering STARTTLS and PIPELINING."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from gateway.testing import GatewayProcess, Receiver
from gateway.testing.certs import issue
from tests.helpers import send
from tests.zones import MX


def tls_context(tmp_path: Path) -> ssl.SSLContext:
    return issue(tmp_path / "certs", ["down.test"]).server_context()


def test_starttls_pipelining_and_connection_reuse(
    tmp_path: Path, base_config: dict[str, Any], mx_port: int
) -> None:
    config = {
        **base_config,
        "delivery": {**base_config["delivery"], "max_connections_per_destination": 1},
    }
    gw = GatewayProcess(tmp_path / "gw", config).start()
    try:
        # Queue five messages while the MX is down, so their retries fall due together.
        qids = [
            send(gw.port, "app@sender.test", [f"t{i}@down.test", f"u{i}@down.test"])
            for i in range(5)
        ]
        for qid in qids:
            gw.wait_event("deferred", qid=qid)
        with Receiver(MX["down"], mx_port, tls_context=tls_context(tmp_path)) as mx:
            got = mx.wait_for(5, timeout=20)
    finally:
        gw.stop()
    assert all(m.tls for m in got), "every message went over STARTTLS"
    assert sorted(r for m in got for r in m.rcpt_tos) == sorted(
        [f"t{i}@down.test" for i in range(5)] + [f"u{i}@down.test" for i in range(5)]
    )
    assert len({m.client_port for m in got}) == 1, "one connection carried all five"
    assert all(
        m.esmtp_params == ("SIZE=" + str(len(m.content) + 3),) or m.esmtp_params for m in got
    )


def test_8bit_message_is_sent_with_body_8bitmime(
    tmp_path: Path, base_config: dict[str, Any], mx_port: int
) -> None:
    data = (
        "From: a@sender.test\r\nSubject: caf\u00e9\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\nd\u00e9j\u00e0 vu\r\n"
    )
    with Receiver(MX["down"], mx_port) as mx, GatewayProcess(tmp_path, base_config) as gw:
        qid = send(gw.port, "app@sender.test", ["eight@down.test"], data.encode())
        gw.wait_event("delivered", qid=qid)
        (got,) = mx.messages
    assert "BODY=8BITMIME" in got.esmtp_params
    assert "déjà vu".encode() in got.content


def test_a_site_requiring_tls_gets_no_plaintext(
    tmp_path: Path, base_config: dict[str, Any], mx_port: int
) -> None:
    """`tls = "required"`: a server without STARTTLS gets no MAIL FROM (the message
    is deferred with 4.7.10), and once it offers STARTTLS the message goes encrypted."""
    rules = tmp_path / "shaping.toml"
    rules.write_text('[domain."down.test"]\ntls = "required"\n')
    config = {**base_config, "delivery": {**base_config["delivery"], "shaping_files": [str(rules)]}}
    with GatewayProcess(tmp_path / "gw", config) as gw:
        with Receiver(MX["down"], mx_port) as plain:
            qid = send(gw.port, "app@sender.test", ["secret@down.test"])
            deferred = gw.wait_event("deferred", qid=qid)
        assert plain.messages == []
        assert deferred["status"] == "4.7.10"
        assert "does not offer STARTTLS" in deferred["reply"]
        with Receiver(MX["down"], mx_port, tls_context=tls_context(tmp_path)) as secure:
            (got,) = secure.wait_for(1, timeout=20)
    assert got.tls
