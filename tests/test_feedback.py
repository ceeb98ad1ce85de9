"""Bounces and complaints coming back over SMTP, matched to what was sent;
complaint-rate throttling. Reports are written after the RFCs and the common
non-standard formats (tests/reports.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.testing import GatewayProcess, Receiver
from gateway.testing.client import send_message
from tests import reports
from tests.helpers import send
from tests.zones import MX

OUTSIDER = "127.0.0.77"  # not in relay_networks: may only send us reports
BOUNCES = "bounces@bounces.sender.test"
FBL = "fbl@bounces.sender.test"


def feedback_config(base: dict[str, Any], **feedback: Any) -> dict[str, Any]:
    return {
        **base,
        "smtp": {"relay_networks": ["127.0.0.1/32"]},
        "feedback": {"bounce_domain": "bounces.sender.test", "fbl_addresses": [FBL], **feedback},
        "plugins": {"enabled": ["bounce_classes", "suppression"]},
    }


BUILDERS: dict[str, Callable[[bytes, str], bytes]] = {
    "rfc3464-headers": reports.rfc3464,
    "rfc3464-whole": lambda original, rcpt: reports.rfc3464(original, rcpt, full=True),
    "qmail": reports.qmail,
    "exim": reports.exim,
    "plain-text-verp": lambda original, rcpt: reports.plain(rcpt),
}


@pytest.mark.parametrize("fmt", list(BUILDERS))
def test_a_bounce_report_is_matched_and_suppresses(
    tmp_path: Path, base_config: dict[str, Any], mx_port: int, fmt: str
) -> None:
    verp = fmt == "plain-text-verp"
    config = feedback_config(base_config, verp=verp)
    with Receiver(MX["good1"], mx_port) as mx, GatewayProcess(tmp_path, config) as gw:
        qid = send(gw.port, "app@sender.test", ["ann@good.test"])
        gw.wait_event("delivered", qid=qid)
        (original,) = mx.wait_for(1)
        if verp:
            assert original.mail_from.startswith("b+")
            assert original.mail_from.endswith("@bounces.sender.test")
        report = BUILDERS[fmt](original.content, "ann@good.test")
        to = original.mail_from if verp else BOUNCES
        result = send_message(gw.port, "", [to], report, source=OUTSIDER)
        assert result.data_reply == "250 2.0.0 Report received"
        bounce = gw.wait_event("async_bounce", qid=qid)
        assert (bounce["rcpt"].lower(), bounce["bounce_class"]) == (
            "ann@good.test",
            "invalid-recipient",
        )
        gw.wait_event("suppressed", address="ann@good.test", reason="hard-bounce")
        again = send_message(gw.port, "app@sender.test", ["ann@good.test"], b"Subject: x\r\n\r\nx")
        assert again.refused == {
            "ann@good.test": "550 5.7.1 Recipient is on a suppression list (hard-bounce)"
        }
        # Taking reports opened no relaying for the outsider.
        relay = send_message(gw.port, "x@outside.test", ["bob@good.test"], b"x", source=OUTSIDER)
        assert relay.refused["bob@good.test"].startswith("550 5.7.1 Relaying denied")


@pytest.mark.parametrize("redacted", [False, True])
def test_a_complaint_is_matched_and_suppresses_for_its_sender_domain(
    tmp_path: Path, base_config: dict[str, Any], mx_port: int, redacted: bool
) -> None:
    config = feedback_config(base_config)
    with Receiver(MX["good1"], mx_port) as mx, GatewayProcess(tmp_path, config) as gw:
        qid = send(gw.port, "app@sender.test", ["ann@good.test"])
        gw.wait_event("delivered", qid=qid)
        (original,) = mx.wait_for(1)
        report = reports.arf(original.content, None if redacted else "ann@good.test")
        result = send_message(gw.port, "", [FBL], report, source=OUTSIDER)
        assert result.data_reply == "250 2.0.0 Report received"
        complaint = gw.wait_event("complaint", qid=qid)
        assert (complaint["rcpt"], complaint["sender_domain"]) == ("ann@good.test", "sender.test")
        gw.wait_event("suppressed", address="ann@good.test", reason="complaint")
        refused = send_message(
            gw.port, "app@sender.test", ["ann@good.test"], b"Subject: x\r\n\r\nx"
        )
        assert refused.refused == {
            "ann@good.test": "550 5.7.1 Recipient is on a suppression list (complaint)"
        }
        other = send_message(gw.port, "app@other.test", ["ann@good.test"], b"Subject: x\r\n\r\nx")
        assert other.refused == {}


def metric(gw: GatewayProcess, metric_name: str, labels: dict[str, str]) -> float | None:
    status, text = gw.admin("GET", "/metrics")
    assert status == 200
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == metric_name and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                return float(sample.value)
    return None


@pytest.mark.parametrize(
    ("warn", "limit", "action", "level"), [(0.1, 0.3, "suspend", 2.0), (0.2, 0.5, "slow", 1.0)]
)
def test_complaint_rate_throttling(
    tmp_path: Path,
    base_config: dict[str, Any],
    mx_port: int,
    warn: float,
    limit: float,
    action: str,
    level: float,
) -> None:
    """One complaint over three deliveries (33%) inside the window: past the
    limit the sender domain is suspended toward the provider, past the warning
    it is slowed; the metrics say so."""
    config = feedback_config(
        base_config, complaint_min_delivered=3, complaint_warn=warn, complaint_limit=limit
    )
    with Receiver(MX["good1"], mx_port) as mx, GatewayProcess(tmp_path, config) as gw:
        qids = [send(gw.port, "app@sender.test", [f"r{n}@good.test"]) for n in range(3)]
        for qid in qids:
            gw.wait_event("delivered", qid=qid)
        original = mx.wait_for(3)[0]
        send_message(gw.port, "", [FBL], reports.arf(original.content, None), source=OUTSIDER)
        # The sender domain, and the one source that sent it all, cross the line.
        by_domain = gw.wait_event("complaint_throttle", kind="sender_domain")
        by_source = gw.wait_event("complaint_throttle", kind="source")
        assert (by_domain["action"], by_domain["stream"]) == (action, "sender.test")
        assert (by_source["action"], by_source["stream"]) == (action, "default")
        labels = {"kind": "sender_domain", "name": "sender.test", "provider": "other"}
        assert metric(gw, "gateway_complaint_throttle", labels) == level
        rate = metric(gw, "gateway_complaint_rate", labels)
        assert rate == pytest.approx(1 / 3)
        if action == "suspend":
            suspended_until_resumed(gw, mx)


def admin(gw: GatewayProcess, path: str, body: dict[str, Any] | None = None) -> Any:
    status, answer = gw.admin("POST" if body is not None else "GET", f"/admin/{path}", body)
    assert status == 200, answer
    return answer


def suspended_until_resumed(gw: GatewayProcess, mx: Receiver) -> None:
    """Nothing more goes, across a restart, until an operator resumes both streams."""
    held = send(gw.port, "app@sender.test", ["held@good.test"])
    time.sleep(2.0)
    assert not [e for e in gw.events("delivered") if e.get("qid") == held]
    scopes = [
        {"provider": "other", "sender_domain": "sender.test"},
        {"provider": "other", "source": "default"},
    ]
    holds = admin(gw, "holds")
    assert {json.dumps(h["scope"], sort_keys=True) for h in holds} == {
        json.dumps(scope, sort_keys=True) for scope in scopes
    }
    assert all(h["until"] is None for h in holds)
    assert gw.stop() == 0
    gw.start()
    gw.wait_event("started", holds_restored=2)
    time.sleep(1.0)
    assert len(mx.messages) == 3
    for scope in scopes:
        assert admin(gw, "resume", {"scope": scope}) == {"resumed": True}
    gw.wait_event("delivered", qid=held)
    assert admin(gw, "holds") == []
