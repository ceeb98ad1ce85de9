"""Two builds of the gateway compared in one run, under one load.

This VM's speed drifts by ±10% between runs a minute apart, more than most
single changes gain, so runs one after the other cannot tell them apart. Here
a gateway from tree A and one from tree B listen on the same port
(SO_REUSEPORT); the kernel spreads smtp-source's connections between them,
both deliver into one smtp-sink, and each one's CPU per message (its queue
manager and ingress workers, from /proc) is read for the messages it
received (its own metrics). Whatever the machine does, it does to both.
Rounds alternate which starts first; the medians and every round print.

    .venv/bin/python -m benchmarks.same_run_ab TREE_A TREE_B [--rounds 6]
        [--messages 8000] [--ingress-processes 1] [--reuse]

A tree is a checkout of this repository with its Rust extension in place:
`git worktree add /tmp/before HEAD~1 && cp gateway/_core*.so /tmp/before/gateway/`
when rust/ is the same in both, else `make build` in the tree (its own venv;
the extension lands in its gateway/). Needs what benchmarks/relay_throughput.py needs;
everything listens on loopback and stops at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
from pathlib import Path

from benchmarks.common import process_tree
from benchmarks.relay_throughput import (
    SINK_IP,
    SINK_ZONE,
    Sink,
    drive,
    gateway_config,
    metrics_text,
    wait_delivered,
    wait_workers,
)
from gateway.testing import DnsServer, GatewayProcess, free_port


def process_cpu(pid: int) -> float:
    """CPU seconds (user and system, all threads) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def gateway_cpu(gateway: GatewayProcess) -> float:
    """CPU seconds of a gateway: its queue manager and its ingress workers."""
    return sum(process_cpu(pid) for pid in process_tree(gateway.pid))


def received(gateway: GatewayProcess) -> float:
    """Messages the gateway has received (gateway_messages_received_total)."""
    text = metrics_text(gateway.admin_port)
    pattern = r"^gateway_messages_received_total(?:\{[^}]*\})? (\S+)$"
    return sum(float(value) for value in re.findall(pattern, text, re.M))


def imports_from(tree: Path) -> dict[str, str]:
    """The environment that makes `python -m gateway` run `tree`'s code (and its
    built-in plugins), not the working directory's nor the installed copy's."""
    return {"PYTHONPATH": f"{tree}:{tree / 'plugins'}", "PYTHONSAFEPATH": "1"}


def one_round(trees: list[Path], args: argparse.Namespace, first: int) -> list[tuple[float, int]]:
    """Both gateways under one load: each one's ms of CPU per message and its
    number of messages, in `trees` order; `first` starts first."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        sink = Sink(workdir, free_port(SINK_IP))
        try:
            with DnsServer(SINK_ZONE) as dns:
                config = gateway_config(workdir, dns, sink, args.ingress_processes)
                port = free_port()
                gateways: dict[int, GatewayProcess] = {}
                try:
                    for index in (first, 1 - first):
                        env = imports_from(trees[index])
                        gateway = GatewayProcess(workdir / f"gw{index}", config, port=port, env=env)
                        gateways[index] = gateway.start()
                    for gateway in gateways.values():
                        wait_workers(gateway, args.ingress_processes)
                    cpu = {i: gateway_cpu(g) for i, g in gateways.items()}
                    count = {i: received(g) for i, g in gateways.items()}
                    base = sink.count()
                    drive(port, args.messages, args.sessions, args.size, args.reuse)
                    wait_delivered(sink, base + args.messages, args.timeout)
                    results = []
                    for i in (0, 1):
                        messages = received(gateways[i]) - count[i]
                        used = gateway_cpu(gateways[i]) - cpu[i]
                        results.append((used * 1000 / max(messages, 1), int(messages)))
                    return results
                finally:
                    for gateway in gateways.values():
                        gateway.stop()
        finally:
            sink.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tree_a", type=Path)
    parser.add_argument("tree_b", type=Path)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--messages", type=int, default=8000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--ingress-processes", type=int, default=1)
    parser.add_argument("--reuse", action="store_true", help="sessions send message after message")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    trees = [args.tree_a.resolve(), args.tree_b.resolve()]
    results = []
    for number in range(args.rounds):
        (a, a_count), (b, b_count) = one_round(trees, args, first=number % 2)
        results.append((a, b))
        print(
            f"round {number + 1}: A {a:.3f} ms CPU per message ({a_count} messages), "
            f"B {b:.3f} ({b_count}), B/A {b / a:.3f}",
            flush=True,
        )
    median_a = statistics.median(r[0] for r in results)
    median_b = statistics.median(r[1] for r in results)
    ratios = [r[1] / r[0] for r in results]
    print(f"A {trees[0]}: median {median_a:.3f} ms CPU per message")
    print(f"B {trees[1]}: median {median_b:.3f} ms CPU per message")
    print(
        f"B/A median of rounds {statistics.median(ratios):.3f}; "
        f"B cheaper in {sum(x < 1 for x in ratios)} of {len(ratios)} rounds"
    )


if __name__ == "__main__":
    main()
