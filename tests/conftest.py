"""Shared fixtures: a real DNS server with the test zones, and MX addresses.

Every MX host is a real SMTP server on its own 127.0.0.x address; all listen
on one port, which the gateway is told to deliver to (delivery.port).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.testing import DnsServer, free_port
from tests.zones import ZONE


@pytest.fixture(scope="session")
def dns_server() -> Iterator[DnsServer]:
    if not shutil.which("nsd") and not shutil.which("/usr/sbin/nsd"):
        pytest.fail("nsd is not installed: run the tests with `make test`, which installs it")
    with DnsServer({"test": ZONE}, servfail=["servfail.test"]) as server:
        yield server


@pytest.fixture(scope="session")
def mx_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def base_config(dns_server: DnsServer, mx_port: int) -> dict[str, Any]:
    """Gateway config pointing at the test DNS and MX port, with fast retries."""
    return {
        "dns": {"nameservers": [dns_server.address], "port": dns_server.port, "timeout": "2s"},
        "delivery": {"port": mx_port, "timeouts": {"connect": "2s", "greeting": "5s"}},
        "retry": {"first_interval": "1s", "max_interval": "2s", "jitter": 0.0},
    }
