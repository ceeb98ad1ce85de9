"""Inbound security against the running gateway: STARTTLS and implicit TLS,
AUTH only over TLS with argon2 credentials and a lockout for guessing IPs,
the certificate reloaded on SIGHUP, abuse limits, and SMTP smuggling."""

from __future__ import annotations

import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.testing import GatewayProcess, Receiver, free_port
from gateway.testing.certs import Certificate, issue
from gateway.testing.client import client_tls, served_certificate
from tests.helpers import make_message
from tests.zones import MX

OUTSIDER = "127.0.0.9"  # a client address outside relay_networks
PASSWORD = "correct horse battery staple"


def users_file(tmp_path: Path) -> Path:
    """Made by `gateway passwd`, as an operator would."""
    line = subprocess.run(
        [sys.executable, "-m", "gateway", "passwd", "shop-app", "--tenant", "shop",
         "--stream", "transactional"],
        input=PASSWORD + "\n", capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert line.startswith("shop-app:$argon2id$")
    assert line.rstrip().endswith(":shop:transactional")
    path = tmp_path / "users"
    path.write_text(line)
    path.chmod(0o600)
    return path


def secured_gateway(
    tmp_path: Path, base_config: dict[str, Any], **node: Any
) -> tuple[GatewayProcess, Certificate]:
    """A gateway with STARTTLS, implicit TLS and AUTH from a users file
    (3 failures lock an IP out); `node` adds [node] settings."""
    cert = issue(tmp_path / "tls", ["gateway.test"])
    submissions = free_port()
    config = {
        **base_config,
        "node": node,
        "smtp": {
            "relay_networks": ["127.0.0.1/32"],
            "submissions_listen": [f"127.0.0.1:{submissions}"],
            "tls": {"certificate": str(cert.cert), "key": str(cert.key)},
            "auth": {"users_file": str(users_file(tmp_path)), "max_failures": 3},
        },
    }
    gw = GatewayProcess(tmp_path / "gw", config)
    gw.submissions_port = submissions  # type: ignore[attr-defined]
    return gw, cert


@pytest.fixture
def secured(
    tmp_path: Path, base_config: dict[str, Any]
) -> Iterator[tuple[GatewayProcess, Certificate]]:
    gw, cert = secured_gateway(tmp_path, base_config)
    with gw.start():
        yield gw, cert


def test_auth_over_starttls_lets_a_user_relay_as_its_tenant(
    secured: tuple[GatewayProcess, Certificate], mx_port: int
) -> None:
    gw, _ = secured
    message = make_message("auth").replace(b"Subject:", b"X-Gateway-Tenant: other\r\nSubject:")
    with (
        Receiver(MX["good1"], mx_port) as mx,
        smtplib.SMTP("127.0.0.1", gw.port, source_address=(OUTSIDER, 0)) as client,
    ):
        client.ehlo("app.test")
        assert client.has_extn("starttls")
        assert not client.has_extn("auth")  # never offered in the clear
        assert client.docmd("AUTH", "PLAIN AGFiYwBkZWY=")[0] == 538
        client.starttls(context=client_tls())
        client.ehlo("app.test")
        assert client.esmtp_features["auth"].split() == ["LOGIN", "PLAIN"]
        client.mail("app@sender.test")
        code, reply = client.rcpt("ann@good.test")
        assert (code, reply) == (530, b"5.7.0 Authentication required")
        client.rset()
        assert client.login("shop-app", PASSWORD)[0] == 235
        client.sendmail("app@sender.test", ["ann@good.test"], message)
        (got,) = mx.wait_for(1)
    received = gw.wait_event("received", client=OUTSIDER)
    assert (received["tenant"], received["stream"]) == ("shop", "transactional")
    assert b"X-Gateway-Tenant" not in got.content
    assert PASSWORD not in gw.log_path.read_text()


def fail_logins(gw: GatewayProcess, times: int) -> None:
    """`times` wrong passwords from OUTSIDER, each on a new connection."""
    for _ in range(times):
        with smtplib.SMTP("127.0.0.1", gw.port, source_address=(OUTSIDER, 0)) as client:
            client.starttls(context=client_tls())
            client.ehlo()
            client.user, client.password = "shop-app", "wrong password!"
            with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
                client.auth("PLAIN", client.auth_plain)  # one try (login() tries two)
            assert failed.value.smtp_code == 535


def auth_reply(gw: GatewayProcess) -> tuple[int, bytes]:
    """The reply to AUTH from OUTSIDER on a new connection."""
    with smtplib.SMTP("127.0.0.1", gw.port, source_address=(OUTSIDER, 0)) as client:
        client.starttls(context=client_tls())
        client.ehlo()
        return client.docmd("AUTH", "LOGIN")


LOCKED_OUT = (421, b"4.7.0 Too many failed logins; try again later")


def test_guessing_is_locked_out_per_client_ip(secured: tuple[GatewayProcess, Certificate]) -> None:
    gw, _ = secured
    fail_logins(gw, 3)
    # Even the right password is refused while the IP is locked out.
    assert auth_reply(gw) == LOCKED_OUT
    # Another client IP is not affected.
    with smtplib.SMTP("127.0.0.1", gw.port, source_address=("127.0.0.8", 0)) as client:
        client.starttls(context=client_tls())
        assert client.login("shop-app", PASSWORD)[0] == 235
    assert len(gw.events("auth_failed")) == 3
    assert all(e["user"] == "shop-app" for e in gw.events("auth_failed"))


def test_failed_logins_count_across_ingress_workers(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    """Two ingress workers: the kernel spreads the guesses over both, yet three
    failures in all lock the IP out at whichever worker answers next (the
    counts are in the policy store). Counted per worker, a worker that saw
    fewer than three would let it guess on."""
    gw, _ = secured_gateway(tmp_path, base_config, ingress_processes=2)
    with gw.start():
        for worker in (0, 1):
            gw.wait_event("worker_started", worker=worker)
        fail_logins(gw, 3)
        time.sleep(1.2)  # another process's writes reach a worker within a second
        assert [auth_reply(gw) for _ in range(8)] == [LOCKED_OUT] * 8


def test_implicit_tls_on_the_submissions_port(
    secured: tuple[GatewayProcess, Certificate], mx_port: int
) -> None:
    gw, _ = secured
    port = gw.submissions_port  # type: ignore[attr-defined]
    with (
        Receiver(MX["good1"], mx_port) as mx,
        smtplib.SMTP_SSL(
            "127.0.0.1", port, context=client_tls(), source_address=(OUTSIDER, 0)
        ) as client,
    ):
        client.ehlo("app.test")
        assert not client.has_extn("starttls")
        assert client.login("shop-app", PASSWORD)[0] == 235
        client.sendmail("app@sender.test", ["bob@good.test"], make_message("465"))
        mx.wait_for(1)
        assert isinstance(client.sock, ssl.SSLSocket)
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")


def test_sighup_reloads_the_certificate(
    secured: tuple[GatewayProcess, Certificate], tmp_path: Path
) -> None:
    gw, cert = secured
    before = served_certificate(gw.port)
    assert before == ssl.PEM_cert_to_DER_cert(cert.cert.read_text())
    renewed = issue(tmp_path / "renewed", ["gateway.test"])
    shutil.copy(renewed.cert, cert.cert)
    shutil.copy(renewed.key, cert.key)
    gw.send_signal(signal.SIGHUP)
    gw.wait_event("reload", tls=True)
    assert served_certificate(gw.port) == ssl.PEM_cert_to_DER_cert(renewed.cert.read_text())


def test_required_tls_and_a_world_readable_key(tmp_path: Path, base_config: dict[str, Any]) -> None:
    cert = issue(tmp_path / "tls", ["gateway.test"])
    cert.key.chmod(0o644)
    config = {
        **base_config,
        "smtp": {"tls": {"certificate": str(cert.cert), "key": str(cert.key), "required": True}},
    }
    with GatewayProcess(tmp_path / "gw", config) as gw:
        warning = gw.wait_event("secret_file_readable")
        assert warning["file"] == str(cert.key)
        with smtplib.SMTP("127.0.0.1", gw.port) as client:
            client.ehlo()
            code, reply = client.mail("app@sender.test")
            assert (code, reply) == (530, b"5.7.0 Must issue a STARTTLS command first")
            client.starttls(context=client_tls())
            client.ehlo()
            assert client.mail("app@sender.test")[0] == 250
            assert not client.has_extn("auth")  # no users file, no plugin: no AUTH


def test_a_missing_certificate_is_a_configuration_error(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[smtp.tls]\ncertificate = "{tmp_path}/none.pem"\nkey = "{tmp_path}/none.key"\n'
    )
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(config)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 2
    assert "none.pem" in out.stderr


# -- abuse limits ------------------------------------------------------------------


def read_reply(sock: socket.socket) -> bytes:
    data = b""
    sock.settimeout(10)
    while not data.endswith(b"\r\n") or data.split(b"\r\n")[-2][3:4] == b"-":
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_abuse_limits(tmp_path: Path, base_config: dict[str, Any]) -> None:
    config = {
        **base_config,
        "smtp": {
            "max_connections_per_ip": 2,
            "max_errors": 3,
            "max_recipients": 5,  # a burst of 25 commands
            "command_rate": 5,
            "max_session_time": "2s",
            "timeout": "1s",  # idle
        },
    }
    with GatewayProcess(tmp_path / "gw", config) as gw:
        client = ("127.0.0.6", 0)  # not the address the start-up probe used
        first = socket.create_connection(("127.0.0.1", gw.port), source_address=client)
        second = socket.create_connection(("127.0.0.1", gw.port), source_address=client)
        assert read_reply(first).startswith(b"220")
        assert read_reply(second).startswith(b"220")
        third = socket.create_connection(("127.0.0.1", gw.port), source_address=client)
        assert read_reply(third) == b"421 4.7.0 Too many connections; try again later\r\n"
        third.close()
        # Another client address still gets in.
        other = socket.create_connection(("127.0.0.1", gw.port), source_address=("127.0.0.7", 0))
        assert read_reply(other).startswith(b"220")
        # Errors: the third error reply (MAIL before EHLO) ends the session.
        for _ in range(3):
            other.sendall(b"MAIL FROM:<no-at-sign>\r\n")
        replies = b""
        while not replies.endswith(b"closing\r\n"):
            chunk = other.recv(4096)
            assert chunk, replies
            replies += chunk
        assert replies.count(b"503 5.5.1 Error: send HELO first") == 3
        assert replies.endswith(b"421 4.7.0 Too many errors; closing\r\n")
        other.close()
        # Command rate: 40 NOOPs at once exceed a burst of 25 at 5 per second.
        first.sendall(b"NOOP\r\n" * 40)
        replies = b""
        while chunk := first.recv(4096):
            replies += chunk
        assert 25 <= replies.count(b"250 2.0.0 OK") < 40
        assert replies.endswith(b"421 4.7.0 Too many commands; slow down\r\n")
        first.close()
        # Session time: a client that keeps a session alive is cut off after 2 s.
        started = time.monotonic()
        while time.monotonic() - started < 5:
            second.sendall(b"NOOP\r\n")
            reply = read_reply(second)
            if not reply.startswith(b"250"):
                break
            time.sleep(0.3)
        assert reply.endswith(b"421 4.4.2 Session too long; closing\r\n")
        assert 1.5 < time.monotonic() - started < 4
        second.close()
        # Idle: commands every 0.3 s kept that session past its 1 s idle
        # timeout; one that says nothing for 1 s is closed.
        quiet = socket.create_connection(("127.0.0.1", gw.port), source_address=("127.0.0.8", 0))
        started = time.monotonic()
        assert read_reply(quiet).startswith(b"220")
        assert read_reply(quiet) == b"421 4.4.2 Idle too long; closing\r\n"
        assert 0.9 < time.monotonic() - started < 3
        quiet.close()
    limits = {e["limit"] for e in gw.events("session_limit")}
    assert limits == {"connections_per_ip", "errors", "command_rate", "session_time", "idle"}


# -- SMTP smuggling ------------------------------------------------------------------

# End-of-data look-alikes from the published SMTP smuggling research (SEC
# Consult, 2023): a vulnerable receiver ends DATA at one of these and runs the
# smuggled commands that follow as a second transaction.
SMUGGLING = [b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r", b"\r\n.\n", b"\r\n\x00.\r\n"]


def test_smtp_smuggling_payloads_stay_inside_one_message(
    tmp_path: Path, base_config: dict[str, Any], mx_port: int
) -> None:
    with Receiver(MX["good1"], mx_port) as mx, GatewayProcess(tmp_path / "gw", base_config) as gw:
        for n, separator in enumerate(SMUGGLING):
            smuggled = (
                b"MAIL FROM:<ceo@sender.test>\r\nRCPT TO:<victim@good.test>\r\nDATA\r\n"
                b"From: ceo@sender.test\r\nSubject: smuggled\r\n\r\nwire the money\r\n"
            )
            body = (
                f"From: app@sender.test\r\nSubject: case {n}\r\n\r\nhello".encode()
                + separator
                + smuggled
            )
            sock = socket.create_connection(("127.0.0.1", gw.port))
            assert read_reply(sock).startswith(b"220")
            for command in (b"EHLO app.test", b"MAIL FROM:<app@sender.test>",
                            f"RCPT TO:<r{n}@good.test>".encode(), b"DATA"):  # fmt: skip
                sock.sendall(command + b"\r\n")
                assert read_reply(sock)[:1] in (b"2", b"3")
            sock.sendall(body + b"\r\n.\r\n")
            assert read_reply(sock).startswith(b"250 2.0.0 Ok: queued as")
            sock.sendall(b"QUIT\r\n")
            assert read_reply(sock).startswith(b"221")
            sock.close()
        got = mx.wait_for(len(SMUGGLING))
        time.sleep(1.0)  # a smuggled second message would arrive by now
    assert sorted(r for m in mx.messages for r in m.rcpt_tos) == sorted(
        f"r{n}@good.test" for n in range(len(SMUGGLING))
    )
    assert all(b"wire the money" in m.content for m in got)
    assert not [e for e in gw.events("received") if e["sender"] == "ceo@sender.test"]
