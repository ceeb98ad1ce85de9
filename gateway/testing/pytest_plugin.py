"""pytest fixtures for plugin authors, registered through the `pytest11` entry
point: installing the gateway makes them available to any test suite.

    def test_my_plugin_refuses_bob(plugin_gateway):
        gw = plugin_gateway(["my_plugin"], settings={"my_plugin": {"block": ["bob"]}})
        result = gw.send("app@shop.test", ["ann@example.test", "bob@example.test"])
        assert list(result.refused) == ["bob@example.test"]
        (got,) = gw.mx.wait_for(1)

`plugin_gateway` starts the real gateway (a subprocess) with the chosen
plugins enabled (they must be installed, i.e. have their entry points), a
real DNS server in which every `*.test` domain has its MX at 127.0.0.200,
and a real SMTP server there that records what it receives. Needs NSD
(`apt-get install nsd`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.testing.client import SendResult, send_message
from gateway.testing.dns import DnsServer
from gateway.testing.net import free_port
from gateway.testing.process import GatewayProcess
from gateway.testing.receiver import RcptPolicy, Receiver

MX_ADDRESS = "127.0.0.200"
ZONE = ["* MX 10 mx", f"mx A {MX_ADDRESS}"]


class PluginGateway:
    """A running gateway with its receiving MX."""

    def __init__(self, process: GatewayProcess, mx: Receiver, dns: DnsServer) -> None:
        self.process = process
        self.mx = mx
        self.dns = dns

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def http_url(self) -> str:
        """The public listener (unsubscribe links)."""
        return f"http://127.0.0.1:{self.process.http_port}"

    def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Call the admin listener with its token: (status, JSON or text)."""
        return self.process.admin(method, path, body)

    def send(self, sender: str, recipients: list[str], data: bytes | None = None) -> SendResult:
        message = (
            data
            or (
                f"From: {sender}\r\nTo: {', '.join(recipients)}\r\nSubject: test\r\n\r\nhello\r\n"
            ).encode()
        )
        return send_message(self.port, sender, recipients, message)

    def wait_event(self, name: str, timeout: float = 15.0, **match: Any) -> dict[str, Any]:
        return self.process.wait_event(name, timeout=timeout, **match)


@pytest.fixture(scope="session")
def plugin_dns() -> Iterator[DnsServer]:
    with DnsServer({"test": ZONE}) as server:
        yield server


@pytest.fixture(scope="session")
def plugin_mx_port() -> int:
    return free_port(MX_ADDRESS)


@pytest.fixture
def plugin_gateway(
    tmp_path: Path, plugin_dns: DnsServer, plugin_mx_port: int
) -> Iterator[Callable[..., PluginGateway]]:
    """A factory: plugin_gateway(plugins, settings=None, config=None, env=None,
    zone=None, rcpt_policy=None). `zone` adds records (e.g. DKIM TXT) to a DNS
    server of its own; `rcpt_policy(address, n)` lets the MX refuse recipients
    (return a reply like "550 5.1.1 No such user", or None to accept)."""
    running: list[tuple[GatewayProcess, Receiver]] = []
    servers: list[DnsServer] = []

    def start(
        plugins: list[str],
        settings: dict[str, dict[str, Any]] | None = None,
        config: dict[str, dict[str, Any]] | None = None,
        env: dict[str, str] | None = None,
        zone: list[str] | None = None,
        rcpt_policy: RcptPolicy | None = None,
    ) -> PluginGateway:
        dns = plugin_dns
        if zone:
            dns = DnsServer({"test": ZONE + zone}).start()
            servers.append(dns)
        base: dict[str, dict[str, Any]] = {
            "dns": {"nameservers": [dns.address], "port": dns.port},
            "delivery": {"port": plugin_mx_port},
            "retry": {"first_interval": "1s", "max_interval": "2s", "jitter": 0.0},
            "plugins": {"enabled": plugins},
            "plugin": settings or {},
        }
        for section, values in (config or {}).items():
            base[section] = {**base.get(section, {}), **values}
        mx = Receiver(MX_ADDRESS, plugin_mx_port, rcpt_policy=rcpt_policy).start()
        process = GatewayProcess(tmp_path / f"gateway{len(running)}", base, env=env)
        running.append((process, mx))
        process.start()
        return PluginGateway(process, mx, dns)

    yield start
    for process, mx in running:
        process.stop()
        mx.stop()
    for server in servers:
        server.stop()
