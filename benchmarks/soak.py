"""Soak: the gateway under steady load for a long while, its memory sampled.

smtp-source keeps `--sessions` sessions sending back to back (choose them so
the delivered rate is about 80% of the peak that relay_throughput measures
with 20) for `--minutes`, through the
gateway (DKIM signing, every built-in plugin, durable spool, ingress workers)
into smtp-sink. Every 10 s it samples the resident memory of the gateway's
processes (manager and workers), the sink's count and the messages queued in
the gateway (`gateway_queue_messages`: accepted, not yet final, each held in
the queue manager's memory, so RSS follows the deepest backlog); at the end it
prints the samples, the delivered rate, and the RSS drift between the first
sample after warm-up and the last (flat: within 10%).

    .venv/bin/python -m benchmarks.soak --sessions 6 --minutes 10
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks.common import process_tree
from benchmarks.relay_throughput import (
    RCPT,
    SENDER,
    SINK_IP,
    SINK_ZONE,
    Sink,
    gateway_config,
)
from gateway.testing import DnsServer, GatewayProcess, free_port
from gateway.testing.dkim import write_key

SAMPLE_SECONDS = 10.0
WARM_UP_SECONDS = 60.0


def rss_kib(pid: int) -> int:
    """Resident memory of a process and its children, in KiB."""
    total = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def queue_depth(admin_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10) as r:
        found = re.search(rb"^gateway_queue_messages (\S+)$", r.read(), re.MULTILINE)
    return int(float(found.group(1))) if found else -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=6, help="parallel smtp-source sessions")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--ingress-processes", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    seconds = args.minutes * 60
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        workdir = Path(tmp)
        sink = Sink(workdir, free_port(SINK_IP))
        key = write_key(workdir / "source.bench.pem", "rsa2048")
        try:
            with DnsServer(SINK_ZONE) as dns:
                config = gateway_config(workdir, dns, sink, args.ingress_processes)
                # smtp-source opens one session per message a second, all from 127.0.0.1
                config["smtp"]["max_connections_per_ip"] = 2000
                config["dkim"] = {
                    "keys": [{"domain": "source.bench", "selector": "b1", "key_file": str(key)}]
                }
                config["log"] = {"level": "warning"}
                with GatewayProcess(workdir / "gw", config) as gw:
                    time.sleep(2)  # the workers start listening (info events are not logged)
                    run(gw, sink, args.sessions, seconds)
        finally:
            sink.stop()


def run(gw: GatewayProcess, sink: Sink, sessions: int, seconds: float) -> None:
    load = subprocess.Popen(
        ["smtp-source", "-s", str(sessions), "-l", "2048", "-m", str(int(2000 * seconds)),
         "-f", SENDER, "-t", RCPT, f"127.0.0.1:{gw.port}"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    started = time.monotonic()
    samples: list[tuple[float, int, int]] = []
    print(f"{sessions} sessions back to back for {seconds / 60:.0f} min")
    header = f"{'t (s)':>6} {'delivered':>10} {'msg/s':>7} {'RSS (MiB)':>10} {'queued':>7}"
    print(header, flush=True)
    last_count, last_t = sink.count(), 0.0
    while time.monotonic() - started < seconds and load.poll() is None:
        time.sleep(SAMPLE_SECONDS)
        t = time.monotonic() - started
        count = sink.count()
        rss = rss_kib(gw.pid)
        queued = queue_depth(gw.admin_port)
        samples.append((t, count, rss))
        print(f"{t:6.0f} {count:10d} {(count - last_count) / (t - last_t):7.0f} "
              f"{rss / 1024:10.1f} {queued:7d}", flush=True)  # fmt: skip
        last_count, last_t = count, t
    load.terminate()
    load.wait(30)
    warm = [s for s in samples if s[0] >= WARM_UP_SECONDS] or samples
    first, last = warm[0], warm[-1]
    rate_done = (last[1] - first[1]) / max(last[0] - first[0], 1.0)
    drift = (last[2] - first[2]) / first[2]
    peak = max(s[2] for s in warm)
    print(f"delivered {rate_done:.0f} msg/s after warm-up; RSS {first[2] / 1024:.0f} -> "
          f"{last[2] / 1024:.0f} MiB ({drift:+.1%}), peak {peak / 1024:.0f} MiB: "
          f"{'flat' if abs(drift) <= 0.10 else 'NOT flat'} (within 10%)")  # fmt: skip


if __name__ == "__main__":
    main()
