"""kill -9 under continuous load: every message that got a 250 reaches the
receiving server after the restarts, exactly once, or twice only when the
crash fell between a delivery and its record in the spool."""

from __future__ import annotations

import os
import random
import re
import signal
import smtplib
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from gateway.ingress import QUEUED_AS
from gateway.testing import GatewayProcess, Receiver
from tests.zones import MX

KILLS = 4
SUBJECT = re.compile(rb"Subject: load (\d+)")


class Load:
    """Clients sending one-recipient messages as fast as the gateway takes
    them, reconnecting while it is down; `acked` holds the numbers that got
    a 250 (with its queue ID)."""

    def __init__(self, port: int, clients: int = 2) -> None:
        self.port = port
        self.acked: dict[int, str] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.next = 0
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(clients)]

    def number(self) -> int:
        with self.lock:
            self.next += 1
            return self.next

    def run(self) -> None:
        deadline = time.monotonic() + 120  # bounded, whatever happens
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as client:
                    client.ehlo("load.test")
                    while not self.stop.is_set():
                        n = self.number()
                        data = (
                            f"From: app@sender.test\r\nSubject: load {n}\r\n\r\nmessage {n}\r\n"
                        ).encode()
                        client.mail("app@sender.test")
                        client.rcpt(f"r{n % 50}@good.test")
                        code, reply = client.data(data)
                        found = QUEUED_AS.search(reply.decode()) if code == 250 else None
                        if found:
                            with self.lock:
                                self.acked[n] = found.group(1)
            except (OSError, smtplib.SMTPException):
                time.sleep(0.05)  # the gateway is down: try again

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


def wait_for_delivery(mx: Receiver, acked: dict[int, str]) -> Counter[int]:
    """How often each load number arrived, once every acknowledged one has
    (or a minute has passed)."""
    deadline = time.monotonic() + 60
    while True:
        delivered = Counter(
            int(m.group(1)) for r in list(mx.messages) if (m := SUBJECT.search(r.content))
        )
        if all(n in delivered for n in acked) or time.monotonic() > deadline:
            return delivered
        time.sleep(0.2)


def unthrottled(tmp_path: Path, base_config: dict[str, Any]) -> dict[str, Any]:
    # The shipped 100/s per site would leave a backlog of thousands to drain
    # after the load (the gateway accepts faster than that): lift it, so the
    # test waits for delivery, not for a rate limit.
    rules = tmp_path / "shaping.toml"
    rules.write_text(
        '[domain."good.test"]\nmessage_rate = "100000/s"\nconnection_rate = "100000/s"\n'
    )
    return {**base_config, "delivery": {**base_config["delivery"], "shaping_files": [str(rules)]}}


def test_kill_9_under_load_loses_nothing_acknowledged(
    tmp_path: Path, base_config: dict[str, Any], mx_port: int
) -> None:
    gw = GatewayProcess(tmp_path / "gw", unthrottled(tmp_path, base_config))
    kills = 0
    rng = random.Random(7)
    with Receiver(MX["good1"], mx_port) as mx:
        gw.start()
        with Load(gw.port) as load:
            for _ in range(KILLS):
                time.sleep(rng.uniform(1.0, 2.5))  # mid-load: accepting and delivering
                kills += 1
                gw.kill()
                gw.start()
            time.sleep(1.0)
        acked = dict(load.acked)
        delivered = wait_for_delivery(mx, acked)
        gw.stop()
    lost = sorted(set(acked) - set(delivered))
    duplicated = sorted(n for n, count in delivered.items() if count > 1)
    print(
        f"\n{len(acked)} acknowledged, {len(delivered)} delivered, {len(lost)} lost, "
        f"{len(duplicated)} delivered twice, {kills} kills"
    )
    assert len(acked) > 200, "the load did not get going"
    assert lost == [], f"acknowledged but never delivered: {lost[:10]}"
    assert all(delivered[n] == 2 for n in duplicated)
    # A duplicate is a delivery the crash kept from being recorded: the
    # gateway logs "delivered" only once the outcome is in the spool's
    # journal, so of the two copies only the second may have been logged.
    delivered_events = Counter(e["qid"] for e in gw.events("delivered"))
    for n in duplicated:
        if n in acked:  # (unacknowledged ones have no queue ID to look up)
            assert delivered_events[acked[n]] == 1, (n, acked[n])
    assert len(duplicated) <= KILLS * 10  # at most what was in flight at each kill


def test_a_worker_killed_under_load_loses_nothing_and_its_segments_go(
    tmp_path: Path, base_config: dict[str, Any], mx_port: int
) -> None:
    """kill -9 of an ingress worker between its sync and its notice leaves
    messages only its segment knows of: the queue manager finds them there
    (its writer is gone), delivers them, and removes the segment."""
    config = unthrottled(tmp_path, base_config)
    config["node"] = {"ingress_processes": 2}
    rng = random.Random(11)
    with Receiver(MX["good1"], mx_port) as mx, GatewayProcess(tmp_path / "gw", config) as gw:
        for worker in (0, 1):
            gw.wait_event("worker_started", worker=worker)
        with Load(gw.port) as load:
            for kill in range(KILLS):
                time.sleep(rng.uniform(1.0, 2.0))
                os.kill(gw.events("worker_started")[-1]["pid"], signal.SIGKILL)
                deadline = time.monotonic() + 15  # replaced
                while len(gw.events("worker_started")) < 3 + kill and time.monotonic() < deadline:
                    time.sleep(0.1)
            time.sleep(1.0)
        acked = dict(load.acked)
        delivered = wait_for_delivery(mx, acked)
        lost = sorted(set(acked) - set(delivered))
        assert len(acked) > 200, "the load did not get going"
        assert lost == [], f"acknowledged but never delivered: {lost[:10]}"
        # No delivery is lost or repeated by a worker's death: they are the manager's.
        assert [n for n, count in delivered.items() if count > 1] == []
        segments = Path(gw.config["node"]["data_dir"]) / "spool" / "segments"
        deadline = time.monotonic() + 15
        while list(segments.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert list(segments.iterdir()) == []  # sealed or writer gone, all done: removed
