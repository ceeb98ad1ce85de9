"""Ingress in worker processes: connections spread over the workers, every
message is queued once and delivered by the queue manager, /metrics counts
across processes, reports to the feedback address reach the manager, and a
worker that dies is replaced."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import smtplib
import ssl
import time
import urllib.request
from pathlib import Path
from typing import Any

from gateway.testing import GatewayProcess, Receiver
from gateway.testing.certs import issue
from gateway.testing.client import served_certificate
from tests.helpers import send
from tests.zones import MX


def metric(gw: GatewayProcess, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.admin_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    found = re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    return sum(float(v) for v in found)


def test_ingress_workers_share_the_port_and_the_manager_delivers(
    tmp_path: Path, base_config: dict[str, Any], mx_port: int
) -> None:
    config = {**base_config, "node": {"ingress_processes": 2}, "plugins": {"enabled": []}}
    with Receiver(MX["good1"], mx_port) as mx, GatewayProcess(tmp_path / "gw", config) as gw:
        started = [gw.wait_event("worker_started", worker=i) for i in (0, 1)]
        assert {e["event_loop"] for e in [*started, gw.wait_event("started")]} == {"uvloop"}
        # wait_for_port saw the first worker; let the second one listen too.
        deadline = time.monotonic() + 10
        while len(gw.events("worker_started")) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        qids = [send(gw.port, "app@sender.test", [f"r{n}@good.test"]) for n in range(40)]
        got = mx.wait_for(40)
        for qid in qids:
            gw.wait_event("finished", qid=qid)
        accepted_by = {e["proc"] for e in gw.events("received")}
        assert accepted_by == {"ingress-0", "ingress-1"}  # the kernel spread them
        assert sorted(r for m in got for r in m.rcpt_tos) == sorted(
            f"r{n}@good.test" for n in range(40)
        )
        assert metric(gw, "gateway_messages_received_total") == 40
        delivered = metric(gw, "gateway_recipients_total")
        assert delivered == 40
        assert metric(gw, "gateway_accept_seconds_count") == 40
        # Receptions are accounted by the manager, which writes the one log.
        log = Path(gw.config["node"]["data_dir"]) / "accounting" / "accounting.jsonl"
        time.sleep(0.5)  # lines reach the file within FLUSH_SECONDS
        records = [json.loads(line) for line in log.read_text().splitlines()]
        assert sorted(r["qid"] for r in records if r["type"] == "received") == sorted(qids)

        # A worker that dies is replaced; its counts stay in the totals.
        os.kill(started[0]["pid"], signal.SIGKILL)
        gw.wait_event("worker_exited", worker=0)
        deadline = time.monotonic() + 15
        while len(gw.events("worker_started")) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(gw.events("worker_started")) == 3
        send(gw.port, "app@sender.test", ["after@good.test"])
        mx.wait_for(41)
        assert metric(gw, "gateway_messages_received_total") == 41
    assert gw.events("stopped")[-1]["queued"] == 0


def test_reports_to_the_feedback_address_reach_the_manager(
    tmp_path: Path, base_config: dict[str, Any], mx_port: int
) -> None:
    config = {
        **base_config,
        "node": {"ingress_processes": 1},
        "plugins": {"enabled": []},
        "feedback": {"bounce_domain": "bounces.gateway.test", "secret": "s" * 32},
    }
    with GatewayProcess(tmp_path / "gw", config) as gw:
        gw.wait_event("worker_started")
        with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
            client.ehlo("mx.example.test")
            client.mail("")
            client.rcpt("bounce@bounces.gateway.test")
            code, reply = client.data(b"From: MAILER-DAEMON@example.test\r\n\r\nnot a DSN\r\n")
        assert (code, reply) == (250, b"2.0.0 Report received")
        assert gw.wait_event("feedback_unreadable")["kind"] == "bounce"
        assert "proc" not in gw.events("feedback_unreadable")[0]  # handled by the manager


def test_sighup_reaches_the_workers(tmp_path: Path, base_config: dict[str, Any]) -> None:
    """The workers terminate TLS: a renewed certificate must reach them."""
    cert = issue(tmp_path / "tls", ["gateway.test"])
    config = {
        **base_config,
        "node": {"ingress_processes": 1},
        "plugins": {"enabled": []},
        "smtp": {"tls": {"certificate": str(cert.cert), "key": str(cert.key)}},
    }
    with GatewayProcess(tmp_path / "gw", config) as gw:
        gw.wait_event("worker_started")
        renewed = issue(tmp_path / "renewed", ["gateway.test"])
        shutil.copy(renewed.cert, cert.cert)
        shutil.copy(renewed.key, cert.key)
        gw.send_signal(signal.SIGHUP)
        gw.wait_event("reload", proc="ingress-0")
        assert served_certificate(gw.port) == ssl.PEM_cert_to_DER_cert(renewed.cert.read_text())


def test_asyncio_s_own_loop_on_request(
    tmp_path: Path, base_config: dict[str, Any], mx_port: int
) -> None:
    """`event_loop = "asyncio"` runs every process on Python's loop, same code."""
    config = {**base_config, "node": {"ingress_processes": 1, "event_loop": "asyncio"}}
    with Receiver(MX["good1"], mx_port) as mx, GatewayProcess(tmp_path / "gw", config) as gw:
        loops = [
            gw.wait_event("worker_started")["event_loop"],
            gw.wait_event("started")["event_loop"],
        ]
        assert loops == ["asyncio", "asyncio"]
        qid = send(gw.port, "app@sender.test", ["loop@good.test"])
        gw.wait_event("finished", qid=qid)
        assert [m.rcpt_tos for m in mx.wait_for(1)] == [["loop@good.test"]]
