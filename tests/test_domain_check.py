"""`gateway check-domain` against a real DNS server with good and broken
records, and the egress reverse-DNS warning at start."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.testing import DnsServer, GatewayProcess
from gateway.testing.dkim import public_record, txt_zone_line, write_key
from gateway.testing.process import dump_toml


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("keys")
    return write_key(d / "good.pem", "rsa2048"), write_key(d / "other.pem", "rsa2048")


@pytest.fixture(scope="module")
def dns(keys: tuple[Path, Path]) -> Iterator[DnsServer]:
    ours, other = keys
    zones = {
        "shop": [
            "good MX 10 mx.good",
            "mx.good A 127.0.0.2",
            'good TXT "v=spf1 ip4:127.0.0.31 -all"',
            txt_zone_line("s1._domainkey.good", public_record(ours)),
            '_dmarc.good TXT "v=DMARC1; p=reject; rua=mailto:d@good.shop"',
            "mta-a.good A 127.0.0.31",
            'broken TXT "v=spf1 ip4:192.0.2.1 -all"',
            txt_zone_line("s1._domainkey.broken", public_record(other)),
            "mta-b.broken A 192.0.2.99",  # the PTR name does not point back
        ],
        "0.0.127.in-addr.arpa": ["31 PTR mta-a.good.shop.", "32 PTR mta-b.broken.shop."],
    }
    with DnsServer(zones) as server:
        yield server


def config(tmp_path: Path, dns: DnsServer, key: Path, domain: str, source: dict[str, str]) -> Path:
    conf: dict[str, Any] = {
        "dns": {"nameservers": [dns.address], "port": dns.port},
        "egress": {"sources": [source]},
        "dkim": {"keys": [{"domain": domain, "selector": "s1", "key_file": str(key)}]},
    }
    path = tmp_path / "gateway.toml"
    path.write_text(dump_toml(conf))
    return path


def check(path: Path, domain: str) -> subprocess.CompletedProcess[str]:
    run = [sys.executable, "-m", "gateway", "check-domain", domain, "--config", str(path)]
    return subprocess.run(run, capture_output=True, text=True, check=False, timeout=60)


def test_a_good_domain_passes_every_check(
    tmp_path: Path, dns: DnsServer, keys: tuple[Path, Path]
) -> None:
    source = {"name": "a", "address": "127.0.0.31", "ehlo": "mta-a.good.shop"}
    out = check(config(tmp_path, dns, keys[0], "good.shop", source), "good.shop")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["OK", "mx"],
        ["OK", "spf"],
        ["OK", "dkim"],
        ["OK", "dmarc"],
        ["OK", "fcrdns"],
    ]
    assert "127.0.0.31: pass" in out.stdout
    assert "p=reject" in out.stdout


def test_a_broken_domain_says_what_is_wrong(
    tmp_path: Path, dns: DnsServer, keys: tuple[Path, Path]
) -> None:
    source = {"name": "b", "address": "127.0.0.32", "ehlo": "mta-b.broken.shop"}
    out = check(config(tmp_path, dns, keys[0], "broken.shop", source), "broken.shop")
    assert out.returncode == 1
    text = out.stdout
    assert "WARN mx       no MX records" in text
    assert "FAIL spf      127.0.0.32: fail" in text
    assert "FAIL dkim     s1._domainkey.broken.shop: published key is not ours" in text
    assert "FAIL dmarc    no DMARC record at _dmarc.broken.shop" in text
    assert "FAIL fcrdns   egress 127.0.0.32: PTR mta-b.broken.shop does not resolve back" in text


def test_the_gateway_warns_at_start_about_egress_reverse_dns(
    tmp_path: Path, dns: DnsServer
) -> None:
    conf: dict[str, dict[str, Any]] = {
        "dns": {"nameservers": [dns.address], "port": dns.port},
        "egress": {
            "sources": [{"name": "b", "address": "127.0.0.32", "ehlo": "mta-b.broken.shop"}]
        },
    }
    with GatewayProcess(tmp_path, conf) as gw:
        warning = gw.wait_event("egress_dns")
    assert warning["check"] == "fcrdns"
    assert "127.0.0.32" in warning["detail"]
