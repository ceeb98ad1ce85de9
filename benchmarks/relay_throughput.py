"""Relay throughput on this machine: Postfix's smtp-source -> MTA -> smtp-sink.

Runs, in one go and under the same load, the gateway (durable spool, MX lookup
through a real DNS server) and a stock Postfix instance relaying to the same
sink, and prints messages/s for each and the ratio gateway/Postfix.

    .venv/bin/python -m benchmarks.relay_throughput [--messages 10000] [--sessions 20] [--dkim]
        [--ingress-processes N] [--rounds N] [--redis] [--reuse]

With --dkim the gateway runs a second time signing every message (RSA-2048,
relaxed/relaxed), and so does Postfix with OpenDKIM as its milter.
It runs SMTP ingress in --ingress-processes worker processes ([node]
ingress_processes; by default one per core), the main process delivering.
Each phase also prints the whole machine's CPU time per message (load
generator and sink included), the cost of each MTA whatever the core count.
Each gateway run also prints its p50/p99 accept latency (end of DATA to 250,
from its gateway_accept_seconds histogram). Last, aiosmtpd servers that
accept and drop (as many processes as the gateway's workers) give the
ingress ceiling and the CPU per message of the SMTP sessions alone, which
the summary subtracts from each MTA's. This VM's speed drifts by ±15% over
minutes: --rounds N runs every phase N times, alternating, and reports the
median of the rounds' ratios. With --redis the gateway also runs on the
fleet's store (a local redis-server; suppression and consent, counters, and
its source's limits shared as two nodes on one host would), to show what the
shared store costs against the embedded one. smtp-source opens a connection
per message, so the SMTP session's set-up and teardown weigh on each message;
with --reuse the gateway and Postfix also run with every session sending
message after message (smtp-source -d), as Postfix relaying to a smarthost
with its connection cache does, and the summary gives that ratio too.

Needs Debian's `postfix` (smtp-source, smtp-sink, postfix) and `nsd`; `make bench`
installs them. Every server listens on loopback only and everything is stopped
at the end; each phase is bounded by --timeout.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from gateway.testing import DnsServer, GatewayProcess, RedisServer, free_port
from gateway.testing.dkim import write_key
from gateway.testing.net import wait_for_port

SINK_IP = "127.0.0.20"
SENDER = "bench@source.bench"
RCPT = "user@sink.bench"


class Sink:
    """smtp-sink with its delivery counter (-c) written to a file."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.out = workdir / "sink.out"
        self.port = port
        self._proc = subprocess.Popen(
            ["smtp-sink", "-u", "nobody", "-c", f"{SINK_IP}:{port}", "256"],
            stdout=self.out.open("wb"),
            stderr=subprocess.STDOUT,
        )
        wait_for_port(SINK_IP, port)

    def count(self) -> int:
        found = re.findall(rb"mesg=(\d+)", self.out.read_bytes()[-200:])
        return int(found[-1]) if found else 0

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(10)


def drive(port: int, messages: int, sessions: int, size: int, reuse: bool = False) -> float:
    """smtp-source against 127.0.0.1:port; returns its wall time (all accepted).
    `reuse`: each session sends message after message (-d), as a smarthost
    client with a connection cache does; else a connection per message."""
    start = time.monotonic()
    subprocess.run(
        [
            "smtp-source",
            *(["-d"] if reuse else []),
            "-s",
            str(sessions),
            "-l",
            str(size),
            "-m",
            str(messages),
            "-f",
            SENDER,
            "-t",
            RCPT,
            f"127.0.0.1:{port}",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.monotonic() - start


def wait_delivered(sink: Sink, target: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while sink.count() < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"sink got {sink.count()} of {target} messages in {timeout}s")
        time.sleep(0.02)


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (every core, /proc/stat)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def measure(
    name: str, port: int, sink: Sink, args: argparse.Namespace, reuse: bool = False
) -> dict[str, float]:
    base = sink.count()
    start, cpu = time.monotonic(), busy_seconds()
    accept = drive(port, args.messages, args.sessions, args.size, reuse)
    wait_delivered(sink, base + args.messages, args.timeout)
    total = time.monotonic() - start
    result = {
        "accept_per_s": args.messages / accept,
        "e2e_per_s": args.messages / total,
        # The machine's CPU per message, load generator and sink included:
        # what an MTA costs, whatever the number of cores.
        "cpu_ms": (busy_seconds() - cpu) * 1000 / args.messages,
    }
    print(
        f"{name:<10} accepted {result['accept_per_s']:8.0f} msg/s   "
        f"delivered end to end {result['e2e_per_s']:8.0f} msg/s   ({total:.1f} s, "
        f"{result['cpu_ms']:.2f} ms CPU per message)",
        flush=True,
    )
    return result


SINK_ZONE = {"bench": ["sink MX 10 mx.sink", f"mx.sink A {SINK_IP}"]}


def gateway_config(
    workdir: Path, dns: DnsServer, sink: Sink, ingress_processes: int
) -> dict[str, dict[str, Any]]:
    """The gateway relaying into the sink, its MX found through `dns`."""
    # Postfix has no per-site rate limits; lift the gateway's shipped 100/s
    # messages and 60/m connections for the sink.
    rules = workdir / "shaping.toml"
    rules.write_text(
        '[domain."sink.bench"]\nmessage_rate = "1000000/s"\nconnection_rate = "1000000/s"\n'
    )
    return {
        "node": {"ingress_processes": ingress_processes},
        # Nor a per-session command rate: a reused session sends ~400/s here.
        "smtp": {"command_rate": 1_000_000},
        "dns": {"nameservers": [dns.address], "port": dns.port},
        "delivery": {"port": sink.port, "shaping_files": [str(rules)]},
        "log": {"level": "info"},
    }


def wait_workers(gateway: GatewayProcess, count: int, timeout: float = 30) -> None:
    """Until the gateway's `count` ingress workers have all started listening."""
    deadline = time.monotonic() + timeout
    while len(gateway.events("worker_started")) < count:
        if time.monotonic() > deadline:
            raise TimeoutError("the ingress workers did not start")
        time.sleep(0.1)


def run_gateway(
    workdir: Path,
    sink: Sink,
    args: argparse.Namespace,
    dkim: bool = False,
    redis: RedisServer | None = None,
    reuse: bool = False,
) -> dict[str, float]:
    workdir.mkdir(exist_ok=True)
    with DnsServer(SINK_ZONE) as dns:
        config = gateway_config(workdir, dns, sink, args.ingress_processes)
        if dkim:  # smtp-source writes From: <bench@source.bench>
            key = write_key(workdir / "source.bench.pem", "rsa2048")
            keys = [{"domain": "source.bench", "selector": "b1", "key_file": str(key)}]
            config["dkim"] = {"keys": keys}
        if redis is not None:
            prefix = f"bench{time.monotonic_ns()}"
            config["store"] = {"backend": "redis", "redis_url": redis.url, "redis_prefix": prefix}
        name = "gw+dkim" if dkim else "gw+redis" if redis else "gw reuse" if reuse else "gateway"
        with GatewayProcess(workdir / name, config) as gw:
            gw_admin = gw.admin_port
            wait_workers(gw, args.ingress_processes)  # all listening before the load
            result = measure(name, gw.port, sink, args, reuse)
            p50, p99 = accept_latency(gw_admin)
            print(f"{'':<10} accept latency p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
            return result | {"p50": p50, "p99": p99}


def metrics_text(admin_port: int) -> str:
    """A gateway's /metrics, as Prometheus would scrape it."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10) as r:
        return r.read().decode()  # type: ignore[no-any-return]


def accept_latency(admin_port: int) -> tuple[float, float]:
    """p50 and p99 of gateway_accept_seconds, interpolated within its buckets."""
    text = metrics_text(admin_port)
    buckets = sorted(
        (float("inf") if le == "+Inf" else float(le), float(count))
        for le, count in re.findall(r'gateway_accept_seconds_bucket\{le="([^"]+)"\} (\S+)', text)
    )
    total = buckets[-1][1]

    def quantile(q: float) -> float:
        lower_edge, lower_count = 0.0, 0.0
        for edge, count in buckets:
            if count >= q * total:
                if edge == float("inf"):
                    return lower_edge
                share = (q * total - lower_count) / max(count - lower_count, 1e-9)
                return lower_edge + (edge - lower_edge) * share
            lower_edge, lower_count = edge, count
        return lower_edge

    return quantile(0.5), quantile(0.99)


NOOP_SERVER = """
import asyncio, sys
from aiosmtpd.smtp import SMTP
from gateway import aiosmtpd_patches, event_loop
class Nothing:
    async def handle_DATA(self, server, session, envelope):
        return "250 2.0.0 OK"
async def main():
    loop = asyncio.get_running_loop()
    await loop.create_server(
        lambda: SMTP(Nothing(), hostname="noop"), "127.0.0.1", int(sys.argv[1]),
        reuse_port=True, backlog=512,
    )
    await asyncio.Event().wait()
# aiosmtpd as the gateway runs it: its event loop and per-connection patches.
aiosmtpd_patches.install()
event_loop.run(main(), "uvloop")
"""


def run_noop(args: argparse.Namespace) -> dict[str, float]:
    """smtp-source into aiosmtpd servers that accept and drop, as many processes
    as the gateway's ingress workers sharing one port: the ingress ceiling, and
    the machine's CPU per message of SMTP sessions alone."""
    port = free_port()
    count = max(1, args.ingress_processes)
    servers = [
        subprocess.Popen([sys.executable, "-c", NOOP_SERVER, str(port)]) for _ in range(count)
    ]
    try:
        wait_for_port("127.0.0.1", port)
        time.sleep(1)  # every process listening
        cpu = busy_seconds()
        rate = args.messages / drive(port, args.messages, args.sessions, args.size)
        cpu_ms = (busy_seconds() - cpu) * 1000 / args.messages
    finally:
        for server in servers:
            server.terminate()
            server.wait(10)
    print(
        f"{'noop':<10} accepted {rate:8.0f} msg/s   (aiosmtpd that does nothing, {count} "
        f"processes, {cpu_ms:.2f} ms CPU per message)",
        flush=True,
    )
    return {"accept_per_s": rate, "cpu_ms": cpu_ms}


def run_postfix(
    sink: Sink, args: argparse.Namespace, dkim: bool = False, reuse: bool = False
) -> dict[str, float]:
    # maillog_file must sit under one of Postfix's maillog_file_prefixes (/var).
    root = Path(tempfile.mkdtemp(prefix="bench-postfix-", dir="/var/tmp"))
    milter = OpenDkim(root) if dkim else None
    postfix = Postfix(root, sink, milter.main_cf() if milter else "")
    try:
        name = "pf+dkim" if dkim else "pf reuse" if reuse else "postfix"
        return measure(name, postfix.port, sink, args, reuse)
    finally:
        postfix.stop()
        if milter:
            milter.stop()
        shutil.rmtree(root, ignore_errors=True)


class OpenDkim:
    """OpenDKIM as Postfix's signing milter: RSA-2048, relaxed/relaxed, the
    same key size and canonicalization as the gateway's run."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        key = write_key(root / "opendkim.pem", "rsa2048")
        conf = root / "opendkim.conf"
        conf.write_text(
            f"Syslog no\nMode s\nDomain source.bench\nSelector b1\nKeyFile {key}\n"
            f"Canonicalization relaxed/relaxed\nSocket inet:{self.port}@127.0.0.1\n"
            f"PidFile {root / 'opendkim.pid'}\nBackground no\nRequireSafeKeys no\n"
        )
        binary = shutil.which("opendkim") or "/usr/sbin/opendkim"
        self._proc = subprocess.Popen([binary, "-f", "-x", str(conf)])
        wait_for_port("127.0.0.1", self.port)

    def main_cf(self) -> str:
        # tempfail rather than accept: mail must not pass unsigned if the milter fails.
        return (
            f"smtpd_milters = inet:127.0.0.1:{self.port}\n"
            "non_smtpd_milters = $smtpd_milters\nmilter_default_action = tempfail\n"
        )

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=2048, help="message body bytes")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per phase")
    parser.add_argument(
        "--dkim", action="store_true", help="also run the gateway signing with RSA-2048"
    )
    parser.add_argument(
        "--ingress-processes",
        type=int,
        default=os.cpu_count() or 1,
        help="[node] ingress_processes of the gateway (default: one per core)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every phase this many times, alternating; ratios are the median",
    )
    parser.add_argument(
        "--redis", action="store_true", help="also run the gateway on the Redis store"
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="also run the gateway and Postfix with each session sending message after "
        "message (smtp-source -d), as a smarthost client caching connections does",
    )
    args = parser.parse_args()
    tools = ["smtp-source", "smtp-sink", "postfix", "nsd", "opendkim"]
    for tool in tools + (["redis-server"] if args.redis else []):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            raise SystemExit(f"{tool} is missing: run `make bench`, which installs it")
    print(
        f"{args.messages} messages of {args.size} bytes over {args.sessions} sessions, "
        f"{os.cpu_count()} cores",
        flush=True,
    )
    rounds: list[dict[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        redis = stack.enter_context(RedisServer()) if args.redis else None
        sink = Sink(workdir, free_port(SINK_IP))
        try:
            for n in range(args.rounds):
                if args.rounds > 1:
                    print(f"-- round {n + 1} of {args.rounds}", flush=True)
                phases = {"gateway": run_gateway(workdir / f"r{n}", sink, args)}
                if redis is not None:
                    phases["gw+redis"] = run_gateway(workdir / f"r{n}", sink, args, redis=redis)
                if args.dkim:
                    phases["gw+dkim"] = run_gateway(workdir / f"r{n}", sink, args, dkim=True)
                phases["postfix"] = run_postfix(sink, args)
                if args.dkim:
                    phases["pf+dkim"] = run_postfix(sink, args, dkim=True)
                if args.reuse:
                    phases["gw reuse"] = run_gateway(workdir / f"r{n}", sink, args, reuse=True)
                    phases["pf reuse"] = run_postfix(sink, args, reuse=True)
                phases["noop"] = run_noop(args)
                rounds.append(phases)
        finally:
            sink.stop()
    report(rounds)


def report(rounds: list[dict[str, dict[str, float]]]) -> None:
    """The ratios; over several rounds, the median of each round's ratio (the
    peers of one round ran minutes apart, so they shared the machine's mood)."""

    def each(ours: str, peer: str, key: str, peer_key: str = "") -> list[float]:
        return [r[ours][key] / r[peer][peer_key or key] for r in rounds]

    def ratio(ours: str, peer: str, key: str, peer_key: str = "") -> float:
        return statistics.median(each(ours, peer, key, peer_key))

    def summary(ours: str, peer: str, key: str) -> str:
        """The median ratio, then every round's: how far the rounds spread."""
        ratios = each(ours, peer, key)
        spread = "" if len(ratios) == 1 else " (" + ", ".join(f"{x:.2f}" for x in ratios) + ")"
        return f"{statistics.median(ratios):.2f}{spread}"

    def median(phase: str, key: str) -> float:
        return statistics.median(r[phase][key] for r in rounds)

    what = "" if len(rounds) == 1 else f", median of {len(rounds)} rounds"
    of_noop = ratio("gateway", "noop", "accept_per_s")
    print(f"ratio gateway/aiosmtpd no-op, accept{what}: {of_noop:.2f}")
    # What each MTA costs beyond SMTP sessions that do nothing (load generator included).
    floor = median("noop", "cpu_ms")
    gateway, postfix = median("gateway", "cpu_ms") - floor, median("postfix", "cpu_ms") - floor
    print(
        f"CPU per message above the no-op's{what}: "
        f"gateway {gateway:.2f} ms, postfix {postfix:.2f} ms"
    )
    # An MTA whose SMTP server is aiosmtpd accepts no faster than aiosmtpd
    # doing nothing: the most any such MTA could relay, against Postfix.
    ceiling = ratio("noop", "postfix", "accept_per_s", "e2e_per_s")
    print(f"ceiling of an MTA on aiosmtpd: no-op accept/postfix end to end{what}: {ceiling:.2f}")
    for key, label in (("accept_per_s", "accept"), ("e2e_per_s", "end to end")):
        print(f"ratio gateway/postfix, {label}{what}: {summary('gateway', 'postfix', key)}")
        if "gw+dkim" in rounds[0]:
            signing = summary("gw+dkim", "pf+dkim", key)
            print(f"ratio gateway+dkim/postfix+opendkim, {label}{what}: {signing}")
    if "gw reuse" in rounds[0]:
        for key, label in (("accept_per_s", "accept"), ("e2e_per_s", "end to end")):
            reused = summary("gw reuse", "pf reuse", key)
            print(f"ratio gateway/postfix, sessions reused, {label}{what}: {reused}")
    if "gw+redis" in rounds[0]:
        shared = ratio("gw+redis", "gateway", "e2e_per_s")
        print(f"ratio gateway on Redis/on SQLite, end to end{what}: {shared:.2f}")


POSTFIX_MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
myhostname = bench-postfix.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [{sink_ip}]:{sink_port}
alias_maps =
alias_database =
maillog_file = {root}/maillog
smtp_tls_security_level = none
smtpd_tls_security_level = none
"""


class Postfix:
    """A private Postfix instance (own config, queue and data directories)."""

    def __init__(self, root: Path, sink: Sink, extra_main_cf: str = "") -> None:
        self.root = root
        self.port = free_port()
        conf = root / "conf"
        root.chmod(0o755)  # Postfix's daemons run as user postfix
        for d in ("conf", "queue", "data"):
            (root / d).mkdir(parents=True, exist_ok=True)
        shutil.chown(root / "data", "postfix")
        master = Path("/etc/postfix/master.cf").read_text()
        master = re.sub(
            r"(?m)^smtp\s+inet\s.*$", f"127.0.0.1:{self.port} inet n - n - - smtpd", master
        )
        (conf / "master.cf").write_text(master)
        (conf / "main.cf").write_text(
            POSTFIX_MAIN_CF.format(root=root, sink_ip=SINK_IP, sink_port=sink.port) + extra_main_cf
        )
        self._postfix("start")
        wait_for_port("127.0.0.1", self.port)

    def _postfix(self, verb: str) -> None:
        subprocess.run(
            ["postfix", "-c", str(self.root / "conf"), verb],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        self._postfix("stop")


if __name__ == "__main__":
    main()
