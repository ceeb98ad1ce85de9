"""Every query of the Grafana dashboards, run against a real Prometheus that
scraped a gateway after it relayed traffic with deliveries, deferrals,
bounces, a suppression hit, a complaint, a suspension, DKIM signing and
warm-up. A query must return a number, or be listed in CANNOT_PRODUCE with
the event this test does not cause."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.testing import GatewayProcess, Receiver
from gateway.testing.client import send_message
from gateway.testing.dkim import write_key
from gateway.testing.prometheus import PrometheusServer
from tests import reports
from tests.helpers import make_message, send
from tests.zones import MX

DASHBOARDS = Path(__file__).parent.parent / "grafana" / "dashboards"
CANNOT_PRODUCE = {
    "sum by (plugin, hook, kind) (rate(gateway_plugin_errors_total[1m]))": (
        "needs a plugin that raises or times out; tests/test_plugins.py covers those"
    ),
    "gateway_fleet_limits_shared": "needs the Redis store; tests/test_fleet.py checks it",
}


def dashboard_queries() -> list[tuple[str, str, str]]:
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel["targets"]:
                expr = target["expr"].replace("$__rate_interval", "1m")
                found.append((path.stem, panel["title"], expr))
    return found


@pytest.fixture(scope="module")
def scraped(
    tmp_path_factory: pytest.TempPathFactory, base_config: dict[str, Any], mx_port: int
) -> Iterator[PrometheusServer]:
    """A gateway that relayed a bit of everything, scraped by Prometheus."""
    tmp = tmp_path_factory.mktemp("dashboards")
    key = write_key(tmp / "sender.pem", "rsa2048")
    config = {
        **base_config,
        "egress": {"sources": [{"name": "a", "address": "127.0.0.31"}]},
        "dkim": {"keys": [{"domain": "sender.test", "selector": "s1", "key_file": str(key)}]},
        "feedback": {
            "bounce_domain": "bounces.sender.test",
            "fbl_addresses": ["fbl@bounces.sender.test"],
            "complaint_min_delivered": 1,
            "complaint_warn": 0.0001,
            "complaint_limit": 0.9,
        },
        "plugin": {"warmup": {"sources": ["a"], "schedule": [1000]}},
    }

    def tempfail(address: str, n: int) -> str | None:
        return "451 4.7.1 Try later" if n == 1 else None

    def reject(address: str, n: int) -> str | None:
        return "550 5.1.1 No such user" if address.startswith("unknown") else None

    with (
        Receiver(MX["good1"], mx_port) as good,
        Receiver(MX["tempfail"], mx_port, rcpt_policy=tempfail),
        Receiver(MX["reject"], mx_port, rcpt_policy=reject),
        GatewayProcess(tmp / "gw", config) as gw,
        PrometheusServer([f"127.0.0.1:{gw.admin_port}"]) as prometheus,
    ):
        # Scraping before the traffic, so rates over the window see it happen.
        prometheus.wait_for_scrapes("gateway_queue_messages", count=2)
        qids = [send(gw.port, "app@sender.test", [f"d{n}@good.test"]) for n in range(5)]
        unsigned = make_message("unsigned", sender="app@other.test")  # no key for other.test
        qids.append(send(gw.port, "app@other.test", ["unsigned@good.test"], unsigned))
        later = send(gw.port, "app@sender.test", ["later@tempfail.test"])
        gone = send(gw.port, "app@sender.test", ["unknown@reject.test"])
        for qid in qids:
            gw.wait_event("delivered", qid=qid)
        gw.wait_event("delivered", qid=later, timeout=30)
        gw.wait_event("suppressed", address="unknown@reject.test")
        refused = send_message(gw.port, "app@sender.test", ["unknown@reject.test"], b"x")
        assert refused.refused, gone
        original = good.wait_for(6)[0]
        report = reports.arf(original.content, None)
        send_message(gw.port, "", ["fbl@bounces.sender.test"], report, source="127.0.0.77")
        gw.wait_event("complaint_throttle")
        status, _ = gw.admin(
            "POST", "/admin/suspend", {"scope": {"site": "nowhere.test"}, "seconds": 600}
        )
        assert status == 200
        time.sleep(1.5)
        prometheus.wait_for_scrapes("gateway_holds", count=3)
        yield prometheus


@pytest.mark.parametrize(("board", "title", "expr"), dashboard_queries())
def test_every_dashboard_query_returns_data(
    scraped: PrometheusServer, board: str, title: str, expr: str
) -> None:
    result = scraped.query(expr)
    values = [float(sample["value"][1]) for sample in result]
    numbers = [v for v in values if not math.isnan(v)]
    if expr in CANNOT_PRODUCE:
        assert numbers == [], f"{expr} has data now: take it off CANNOT_PRODUCE"
        return
    assert numbers, f"{board} / {title}: no data for {expr}"


def test_the_dashboards_are_what_build_py_writes(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("build", DASHBOARDS.parent / "build.py")
    assert spec is not None
    assert spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    for uid, (title, panels) in build.DASHBOARDS.items():
        written = json.loads((DASHBOARDS / f"{uid}.json").read_text())
        assert written == build.dashboard(uid, title, panels), f"run grafana/build.py ({uid})"
        assert written["templating"]["list"][0]["type"] == "datasource"
