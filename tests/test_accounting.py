"""The accounting log: records per event with the documented fields, rotation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway.accounting import AccountingLog
from gateway.config import AccountingConfig
from gateway.testing import GatewayProcess, Receiver
from gateway.testing.client import send_message
from tests.helpers import send
from tests.zones import MX

DELIVERY_FIELDS = {
    "type", "time_logged", "qid", "time_queued", "sender", "recipient", "dsn_action",
    "dsn_status", "dsn_diag", "remote_mta", "remote_ip", "source", "source_ip", "size",
    "bounce_class", "attempts", "tenant", "campaign", "message_id", "next_attempt",
}  # fmt: skip


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_reception_delivery_bounce_and_rejection_are_accounted(
    tmp_path: Path, base_config: dict[str, Any], mx_port: int
) -> None:
    def reject(address: str, n: int) -> str | None:
        return "550 5.1.1 No such user" if address.startswith("unknown") else None

    config = {**base_config, "smtp": {"relay_networks": ["127.0.0.1/32"]}}
    with (
        Receiver(MX["good1"], mx_port),
        Receiver(MX["reject"], mx_port, rcpt_policy=reject),
        GatewayProcess(tmp_path, config) as gw,
    ):
        qid = send(gw.port, "app@sender.test", ["ann@good.test", "unknown@reject.test"])
        gw.wait_event("delivered", qid=qid)
        gw.wait_event("bounced", qid=qid)
        send_message(gw.port, "x@out.test", ["bob@good.test"], b"x", source="127.0.0.77")
    found = records(tmp_path / "data" / "accounting" / "accounting.jsonl")
    received = [r for r in found if r["type"] == "received" and r["qid"] == qid]
    assert received[0]["recipients"] == ["ann@good.test", "unknown@reject.test"]
    assert received[0]["message_id"] == "test@sender.test"
    (delivered,) = [r for r in found if r["type"] == "delivered" and r["qid"] == qid]
    assert set(delivered) == DELIVERY_FIELDS
    assert (delivered["recipient"], delivered["dsn_status"], delivered["remote_ip"]) == (
        "ann@good.test",
        "2.0.0",
        MX["good1"],
    )
    bounced = [r for r in found if r["type"] == "bounced" and r["qid"] == qid]
    assert bounced[0]["dsn_diag"] == "550 5.1.1 No such user"
    assert bounced[0]["dsn_action"] == "failed"
    (rejected,) = [r for r in found if r["type"] == "rejected"]
    assert (rejected["client_ip"], rejected["recipient"]) == ("127.0.0.77", "bob@good.test")


def test_rotation_by_size_and_age_keeps_the_newest(tmp_path: Path) -> None:
    config = AccountingConfig(rotate_bytes=1024, rotate_interval=3600, keep=2)
    log = AccountingLog(config, tmp_path)
    for n in range(40):  # ~80 bytes each: a rotation every dozen lines
        log.write("delivered", {"qid": f"{n:016d}", "recipient": "ann@good.test"})
    log.close()
    rotated = sorted(tmp_path.glob("accounting-*.jsonl"))
    assert len(rotated) == 2  # older ones deleted
    assert all(p.stat().st_size >= 1024 for p in rotated)
    current = records(tmp_path / "accounting.jsonl")
    assert current[-1]["qid"] == f"{39:016d}"
    # Age: an old, non-empty file rotates on the next write.
    log = AccountingLog(config, tmp_path)
    log._opened -= 7200
    log.write("delivered", {"qid": "late"})
    log.close()
    assert [r["qid"] for r in records(tmp_path / "accounting.jsonl")] == ["late"]
