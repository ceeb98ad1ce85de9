"""DKIM signing and message fix-up on the relay path, end to end.

Every signature the gateway makes here is checked by dkimpy (keys fetched from
a real DNS server) and by OpenDKIM; tampered copies must fail both.
"""

from __future__ import annotations

import re
import signal
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.ingress import QUEUED_AS
from gateway.testing import DnsServer, GatewayProcess, Receiver, free_port
from gateway.testing.dkim import (
    DkimpyVerifier,
    opendkim_verify,
    public_record,
    txt_zone_line,
    write_key,
)
from tests.zones import MX, ZONE

RCPT = "dkim@good.test"


class Keys:
    """Keys on disk and the TXT records published for them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.records: dict[str, str] = {}
        self.brand_rsa = self._make("brand.test", "s1", "rsa2048")
        self.brand_ed = self._make("brand.test", "e1", "ed25519")
        self.esp_rsa = self._make("esp.test", "esp", "rsa4096")
        # Published but not configured at first: the key-rotation tests swap it in.
        self.rotated = self._make("rot.test", "r1", "rsa2048")
        self.stale = write_key(root / "stale.pem", "rsa2048")  # never published
        self.small = write_key(root / "small.pem", "rsa1024")

    def _make(self, domain: str, selector: str, kind: str) -> Path:
        path = write_key(self.root / f"{domain}.{selector}.pem", kind)
        self.records[f"{selector}._domainkey.{domain}"] = public_record(path)
        return path

    def zone_lines(self) -> list[str]:
        return [txt_zone_line(name.removesuffix(".test"), r) for name, r in self.records.items()]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def dns(keys: Keys) -> Iterator[DnsServer]:
    with DnsServer({"test": ZONE + keys.zone_lines()}) as server:
        yield server


@pytest.fixture(scope="module")
def verifier(dns: DnsServer) -> DkimpyVerifier:
    return DkimpyVerifier(dns.address, dns.port)


@pytest.fixture(scope="module")
def mx() -> Iterator[Receiver]:
    with Receiver(MX["good1"], free_port(MX["good1"])) as receiver:
        yield receiver


def gateway_config(dns: DnsServer, mx: Receiver, keys: Keys, **dkim: Any) -> dict[str, Any]:
    key_list = [
        {"domain": "brand.test", "selector": "s1", "key_file": str(keys.brand_rsa)},
        {"domain": "brand.test", "selector": "e1", "key_file": str(keys.brand_ed)},
        {"domain": "esp.test", "selector": "esp", "key_file": str(keys.esp_rsa)},
    ]
    return {
        "dns": {"nameservers": [dns.address], "port": dns.port, "timeout": "2s"},
        "delivery": {"port": mx.port},
        "dkim": {"keys": key_list, **dkim},
    }


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, dns: DnsServer, mx: Receiver, keys: Keys
) -> Iterator[GatewayProcess]:
    config = gateway_config(dns, mx, keys, domain_map={"mapped.test": "esp.test"})
    with GatewayProcess(tmp_path_factory.mktemp("gw"), config) as gw:
        yield gw


def relay(gw: GatewayProcess, mx: Receiver, data: bytes, utf8: bool = False) -> bytes:
    """Send through the gateway; the message as the MX received it."""
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.ehlo("client.test")
        options = ["SMTPUTF8", "BODY=8BITMIME"] if utf8 else []
        code, reply = client.mail("app@brand.test", options)
        assert code == 250, reply
        code, reply = client.rcpt(RCPT)
        assert code == 250, reply
        code, reply = client.data(data)
        assert code == 250, reply
    qid = QUEUED_AS.search(reply.decode())
    assert qid
    gw.wait_event("delivered", qid=qid.group(1))
    (got,) = [m for m in mx.messages if f"id {qid.group(1)}".encode() in m.content]
    return got.content


def qid_of(content: bytes) -> str:
    """The queue ID from the gateway's Received header."""
    match = re.search(rb" id ([0-9A-Z]{16})", content)
    assert match
    return match.group(1).decode()


def refused(gw: GatewayProcess, data: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail("app@brand.test")
        client.rcpt(RCPT)
        return client.data(data)


def message(from_: str = "News <news@brand.test>", extra: str = "", body: str = "Hi\r\n") -> bytes:
    return (
        f"From: {from_}\r\nTo: <{RCPT}>\r\nSubject: Offer\r\n"
        f"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <m1@brand.test>\r\n"
        f"{extra}\r\n{body}"
    ).encode()


def signed_by(checks: list[Any]) -> set[tuple[str, str, bool]]:
    return {(c.domain, c.selector, c.ok) for c in checks}


def assert_opendkim_passes(content: bytes, keys: Keys) -> None:
    verdicts = opendkim_verify(content, keys.records)
    assert len(verdicts) == content.count(b"DKIM-Signature:"), verdicts
    assert all("succeeded" in v for v in verdicts), verdicts


def test_author_domain_signs_with_rsa_and_ed25519(
    gateway: GatewayProcess, mx: Receiver, verifier: DkimpyVerifier, keys: Keys
) -> None:
    content = relay(gateway, mx, message())
    assert signed_by(verifier.verify(content)) == {
        ("brand.test", "s1", True),
        ("brand.test", "e1", True),
    }
    assert_opendkim_passes(content, keys)
    assert b"a=ed25519-sha256" in content


@pytest.mark.parametrize(
    ("name", "extra", "body"),
    [
        ("trailing whitespace", "X-Note: padded   \t\r\n", "line with spaces   \r\n\t\r\n\r\n\r\n"),
        (
            "long folded header",
            "X-Long: " + "\r\n ".join(["word" * 15] * 12) + "\r\n",
            "folded\r\n",
        ),
        (
            "8-bit body",
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n",
            "déjà vu, naïve café\r\n",
        ),
        ("empty body", "", ""),
        (
            "malformed MIME",
            'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="never"\r\n',
            "--wrong\r\nContent-Type: text/plain\r\n\r\nunterminated =?utf-8?q?x",
        ),
        ("mixed CRLF and LF", "", "one\ntwo\r\nthree\n\nfour"),
        (
            "one-click unsubscribe",
            "List-Unsubscribe: <https://brand.test/u/1>\r\n"
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
            "bye\r\n",
        ),
    ],
)
def test_signatures_verify_on_awkward_messages(
    gateway: GatewayProcess,
    mx: Receiver,
    verifier: DkimpyVerifier,
    keys: Keys,
    name: str,
    extra: str,
    body: str,
) -> None:
    data = message(extra=extra, body=body)
    content = relay(gateway, mx, data, utf8=any(ord(c) > 127 for c in body))
    checks = verifier.verify(content)
    assert len(checks) == 2, (name, checks)
    assert all(c.ok for c in checks), (name, checks)
    assert_opendkim_passes(content, keys)


def test_tampering_breaks_every_signature(
    gateway: GatewayProcess, mx: Receiver, verifier: DkimpyVerifier, keys: Keys
) -> None:
    content = relay(
        gateway,
        mx,
        message(extra="List-Unsubscribe: <https://brand.test/u/2>\r\n", body="Pay 10 EUR\r\n"),
    )
    header, _, body = content.partition(b"\r\n\r\n")
    tampered = {
        "body": header + b"\r\n\r\n" + body.replace(b"10", b"99"),
        "subject": content.replace(b"Subject: Offer", b"Subject: Free"),
        "second From (oversigned)": content.replace(
            b"\r\n\r\n", b"\r\nFrom: evil@attacker.test\r\n\r\n", 1
        ),
        "List-Unsubscribe": content.replace(b"brand.test/u/2", b"attacker.test/u/2"),
    }
    for what, data in tampered.items():
        checks = verifier.verify(data)
        assert checks, what
        assert not any(c.ok for c in checks), (what, checks)
        verdicts = opendkim_verify(data, keys.records)
        assert verdicts, what
        assert all("failed" in v for v in verdicts), (what, verdicts)


def test_signed_header_list_oversigns_from_and_covers_unsubscribe(
    gateway: GatewayProcess, mx: Receiver
) -> None:
    content = relay(gateway, mx, message())
    unfolded = re.sub(rb"\r\n[ \t]+", b" ", content.partition(b"\r\n\r\n")[0])
    h_tag = re.search(rb"DKIM-Signature:.*?h=([^;]+);", unfolded)
    assert h_tag
    signed = [h.strip().lower() for h in h_tag.group(1).decode().split(":")]
    assert signed.count("from") == 2
    assert {"list-unsubscribe", "list-unsubscribe-post", "date", "message-id"} <= set(signed)


def test_subdomain_signs_with_parent_key_and_mapping_picks_service_domain(
    gateway: GatewayProcess, mx: Receiver, verifier: DkimpyVerifier
) -> None:
    content = relay(gateway, mx, message(from_="alerts@mail.brand.test"))
    assert {c.domain for c in verifier.verify(content)} == {"brand.test"}
    content = relay(gateway, mx, message(from_="shop@mapped.test"))
    assert signed_by(verifier.verify(content)) == {("esp.test", "esp", True)}


def test_missing_date_and_message_id_are_added_before_signing(
    gateway: GatewayProcess, mx: Receiver, verifier: DkimpyVerifier
) -> None:
    data = f"From: news@brand.test\r\nTo: <{RCPT}>\r\nSubject: bare\r\n\r\nx\r\n".encode()
    content = relay(gateway, mx, data)
    header = content.partition(b"\r\n\r\n")[0]
    assert b"\r\nDate: " in header
    assert b"@gateway.test>" in header  # Message-ID: <qid@hostname>
    assert all(c.ok for c in verifier.verify(content))
    event = gateway.wait_event("lint", qid=qid_of(content))
    assert any(f.startswith("missing-date (fixed)") for f in event["findings"])


def test_no_key_relays_unsigned_and_says_so(gateway: GatewayProcess, mx: Receiver) -> None:
    content = relay(gateway, mx, message(from_="someone@unknown.test"))
    assert b"DKIM-Signature" not in content
    event = gateway.wait_event("dkim_unsigned", qid=qid_of(content))
    assert (event["reason"], event["action"]) == ("no_key", "relay")


def test_lint_rejects_two_from_headers(gateway: GatewayProcess) -> None:
    code, reply = refused(gateway, message(extra="From: second@brand.test\r\n"))
    assert (code, reply[:5]) == (550, b"5.6.0")
    assert b"one From" in reply


@pytest.mark.parametrize(
    ("on_failure", "expected"), [("reject", (550, b"5.7.5")), ("defer", (451, b"4.7.5"))]
)
def test_on_failure_refuses_unsignable_mail(
    tmp_path: Path,
    dns: DnsServer,
    mx: Receiver,
    keys: Keys,
    on_failure: str,
    expected: tuple[int, bytes],
) -> None:
    config = gateway_config(dns, mx, keys, on_failure=on_failure)
    with GatewayProcess(tmp_path, config) as gw:
        code, reply = refused(gw, message(from_="someone@unknown.test"))
        assert (code, reply[:5]) == expected, reply
        assert b"DKIM" in reply


def test_also_sign_adds_the_service_signature(
    tmp_path: Path, dns: DnsServer, mx: Receiver, keys: Keys, verifier: DkimpyVerifier
) -> None:
    config = gateway_config(
        dns, mx, keys, also_sign=["esp.test"], header_canonicalization="simple",
        body_canonicalization="simple",
    )  # fmt: skip
    with GatewayProcess(tmp_path, config) as gw:
        content = relay(gw, mx, message(body="simple  canon \r\n"))
    assert b"c=simple/simple" in content
    assert signed_by(verifier.verify(content)) == {
        ("brand.test", "s1", True),
        ("brand.test", "e1", True),
        ("esp.test", "esp", True),
    }
    assert_opendkim_passes(content, keys)


def test_key_file_change_and_sighup_reload_keys(
    tmp_path: Path, dns: DnsServer, mx: Receiver, keys: Keys, verifier: DkimpyVerifier
) -> None:
    live = tmp_path / "rot.pem"
    live.write_bytes(keys.stale.read_bytes())  # not the published key: signatures fail
    config = gateway_config(dns, mx, keys, reload_interval="0.2s")
    config["dkim"]["keys"] = [{"domain": "rot.test", "selector": "r1", "key_file": str(live)}]
    with GatewayProcess(tmp_path / "gw", config) as gw:
        before = relay(gw, mx, message(from_="a@rot.test"))
        assert signed_by(verifier.verify(before)) == {("rot.test", "r1", False)}

        live.write_bytes(keys.rotated.read_bytes())  # the file watcher picks it up
        gw.wait_event("dkim_key_loaded", domain="rot.test")
        after = relay(gw, mx, message(from_="a@rot.test"))
        assert signed_by(verifier.verify(after)) == {("rot.test", "r1", True)}

        live.write_text("not a key")  # a broken rotation keeps the previous key
        assert "not a PEM private key" in gw.wait_event("dkim_key_error")["error"]
        still = relay(gw, mx, message(from_="a@rot.test"))
        assert signed_by(verifier.verify(still)) == {("rot.test", "r1", True)}

        live.write_bytes(keys.stale.read_bytes())
        gw.send_signal(signal.SIGHUP)
        gw.wait_event("reload")
        stale = relay(gw, mx, message(from_="a@rot.test"))
        assert signed_by(verifier.verify(stale)) == {("rot.test", "r1", False)}


def test_unusable_key_stops_start_with_a_clear_message(tmp_path: Path, keys: Keys) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[[dkim.keys]]\ndomain = "brand.test"\nselector = "old"\nkey_file = "{keys.small}"\n'
    )
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 2
    assert "smaller than 2048 bits" in out.stderr
    assert str(keys.small) in out.stderr
