"""MTA-STS (RFC 8461) against a real policy host (HTTPS, certificate from a
test CA) and MX hosts with good, self-signed or unnamed certificates: enforce
policies send only over verified TLS to the MX hosts they name, testing
policies are not enforced, and a policy outlives its host being down."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.delivery.mta_sts import Policy, PolicyError, parse_policy, parse_txt
from gateway.testing import GatewayProcess, Receiver, free_port
from gateway.testing.certs import Certificate, issue, make_ca
from tests.helpers import send
from tests.zones import MX

POLICIES = {
    "mta-sts.sts.test": "version: STSv1\nmode: enforce\nmx: mx.sts.test\nmax_age: 86400\n",
    "mta-sts.stsbad.test": "version: STSv1\nmode: enforce\nmx: *.stsbad.test\nmax_age: 86400\n",
    "mta-sts.ststesting.test": (
        "version: STSv1\nmode: testing\nmx: mx.ststesting.test\nmax_age: 86400\n"
    ),
    "mta-sts.stsmismatch.test": (
        "version: STSv1\nmode: enforce\nmx: mx.elsewhere.test\nmax_age: 86400\n"
    ),
}


class PolicyHost:
    """HTTPS on the policy host's address, one policy per Host name."""

    def __init__(self, cert: Certificate) -> None:
        self.port = free_port(MX["sts_policy"])
        self.fetched: list[str] = []
        self._cert = cert
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None

    async def _policy(self, request: web.Request) -> web.Response:
        host = request.host.partition(":")[0]
        self.fetched.append(host)
        if host not in POLICIES:
            return web.Response(status=404)
        return web.Response(text=POLICIES[host], content_type="text/plain")

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/.well-known/mta-sts.txt", self._policy)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, MX["sts_policy"], self.port, ssl_context=self._cert.server_context()
        )
        await site.start()

    def __enter__(self) -> PolicyHost:
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._runner = None
            self._loop.call_soon_threadsafe(self._loop.stop)

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Certificate, Certificate]:
    """The test CA and the policy host's certificate it signed."""
    ca = make_ca(tmp_path / "ca")
    return ca, issue(tmp_path / "policy", list(POLICIES), ca)


@pytest.fixture
def policy_host(pki: tuple[Certificate, Certificate]) -> Iterator[PolicyHost]:
    with PolicyHost(pki[1]) as host:
        yield host


def sts_config(base: dict[str, Any], ca: Certificate, port: int) -> dict[str, Any]:
    return {
        **base,
        "delivery": {**base["delivery"], "ca_file": str(ca.cert)},
        "mta_sts": {"port": port},
    }


def test_policies_are_enforced_tested_and_kept(
    tmp_path: Path,
    base_config: dict[str, Any],
    mx_port: int,
    pki: tuple[Certificate, Certificate],
    policy_host: PolicyHost,
) -> None:
    ca, _ = pki
    good = issue(tmp_path / "mx", ["mx.sts.test"], ca).server_context()
    self_signed = issue(tmp_path / "bad", ["mx.stsbad.test"]).server_context()
    testing = issue(tmp_path / "testing", ["mx.ststesting.test"]).server_context()
    config = sts_config(base_config, ca, policy_host.port)
    gw = GatewayProcess(tmp_path / "gw", config)
    with (
        Receiver(MX["sts"], mx_port, tls_context=good) as sts,
        Receiver(MX["sts_bad"], mx_port, tls_context=self_signed) as bad,
        Receiver(MX["sts_testing"], mx_port, tls_context=testing) as tested,
        Receiver(MX["sts_mismatch"], mx_port) as mismatch,
        gw.start(),
    ):
        ok = send(gw.port, "app@sender.test", ["ann@sts.test"])
        refused = send(gw.port, "app@sender.test", ["bob@stsbad.test"])
        lenient = send(gw.port, "app@sender.test", ["cy@ststesting.test"])
        unnamed = send(gw.port, "app@sender.test", ["dee@stsmismatch.test"])
        gw.wait_event("delivered", qid=ok)
        (got,) = sts.wait_for(1)
        assert got.tls
        deferred = gw.wait_event("deferred", qid=refused)
        assert deferred["status"] == "4.7.5"
        assert "certificate not valid" in deferred["reply"]
        gw.wait_event("delivered", qid=lenient)  # testing mode: not enforced
        assert tested.wait_for(1)[0].tls
        mismatched = gw.wait_event("deferred", qid=unnamed)
        assert mismatched["reply"] == "MTA-STS: no MX host of stsmismatch.test matches its policy"
        assert bad.messages == []
        assert mismatch.messages == []
        assert gw.wait_event("mta_sts_testing")["domain"] == "ststesting.test"
    fetched = set(policy_host.fetched)
    assert fetched == set(POLICIES)
    # The policy host goes away; after a restart the kept policy still holds.
    policy_host.stop()
    with Receiver(MX["sts_bad"], mx_port) as plain_bad, gw.start():
        again = send(gw.port, "app@sender.test", ["eve@stsbad.test"])
        assert gw.wait_event("deferred", qid=again)["status"] in ("4.7.10", "4.7.5")
        assert plain_bad.messages == []


def test_policy_and_record_parsing() -> None:
    policy = parse_policy(
        "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\n"
        "max_age: 604800\r\n",
        "abc",
        1000.0,
    )
    assert policy == Policy("abc", "enforce", ("mail.example.com", "*.example.net"), 604800, 1000.0)
    assert policy.allows("MAIL.example.com.")
    assert policy.allows("mx1.example.net")
    assert not policy.allows("a.b.example.net")  # the wildcard is one label
    assert not policy.allows("example.net")
    for bad in ("version: STSv2\nmode: enforce\nmx: a\nmax_age: 1\n",
                "version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n",
                "version: STSv1\nmode: enforce\nmax_age: 1\n",
                "version: STSv1\nmode: enforce\nmx: a\nmax_age: 99999999999\n"):  # fmt: skip
        with pytest.raises(PolicyError):
            parse_policy(bad, "x", 0.0)
    assert parse_txt(["v=STSv1; id=20160831085700Z;"]) == "20160831085700Z"
    assert parse_txt(["v=STSv1; id=1", "v=STSv1; id=2"]) is None  # two records: none
    assert parse_txt(["v=spf1 -all"]) is None
