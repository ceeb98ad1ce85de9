"""The relay benchmark's gateway phases, small: each one relays every message
smtp-source sends through the gateway into smtp-sink (the sink's count is
checked), on the embedded store, on Redis and with sessions reused, and the
summary reports them; and the same-run A/B's round."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from benchmarks import relay_throughput as bench
from benchmarks import same_run_ab
from gateway.testing import RedisServer, free_port


def test_gateway_phases_relay_every_message_and_are_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = argparse.Namespace(messages=200, sessions=4, size=2048, timeout=60, ingress_processes=1)
    sink = bench.Sink(tmp_path, free_port(bench.SINK_IP))
    try:
        with RedisServer() as redis:
            embedded = bench.run_gateway(tmp_path / "r0", sink, args)
            shared = bench.run_gateway(tmp_path / "r0", sink, args, redis=redis)
        reused = bench.run_gateway(tmp_path / "r0", sink, args, reuse=True)
        assert sink.count() == 600  # measure() waited for each phase's 200
    finally:
        sink.stop()
    for phase in (embedded, shared, reused):
        assert phase["e2e_per_s"] > 0
        assert 0 < phase["p50"] <= phase["p99"]
    # The report's arithmetic, with the gateway standing in for Postfix.
    noop = {"accept_per_s": 2 * embedded["e2e_per_s"], "cpu_ms": 0.0}
    phases = {"gateway": embedded, "gw+redis": shared, "postfix": embedded, "noop": noop}
    bench.report([phases | {"gw reuse": reused, "pf reuse": embedded}])
    out = capsys.readouterr().out
    assert "ratio gateway/postfix, end to end: 1.00" in out
    assert "no-op accept/postfix end to end: 2.00" in out
    ratio = reused["e2e_per_s"] / embedded["e2e_per_s"]
    assert f"ratio gateway/postfix, sessions reused, end to end: {ratio:.2f}" in out
    ratio = shared["e2e_per_s"] / embedded["e2e_per_s"]
    assert f"ratio gateway on Redis/on SQLite, end to end: {ratio:.2f}" in out


def test_several_rounds_report_the_median_and_every_round(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def phases(gateway: float, postfix: float) -> dict[str, dict[str, float]]:
        gw = {"accept_per_s": gateway, "e2e_per_s": gateway, "cpu_ms": 1.0}
        pf = {"accept_per_s": postfix, "e2e_per_s": postfix, "cpu_ms": 2.0}
        return {"gateway": gw, "postfix": pf, "noop": {"accept_per_s": 3000.0, "cpu_ms": 0.5}}

    bench.report([phases(1500, 700), phases(1400, 750), phases(1600, 760)])
    out = capsys.readouterr().out
    assert "end to end, median of 3 rounds: 2.11 (2.14, 1.87, 2.11)" in out


def test_a_same_run_round_shares_one_load_between_two_gateways() -> None:
    """Two gateways (here both from this tree) on one port: each receives part
    of the load, every message is delivered (one_round waits for the sink's
    count), and each one's CPU per message is read."""
    tree = Path(__file__).resolve().parents[1]
    args = argparse.Namespace(
        messages=200, sessions=4, size=2048, timeout=60, ingress_processes=1, reuse=False
    )
    (a_cpu, a_count), (b_cpu, b_count) = same_run_ab.one_round([tree, tree], args, first=1)
    assert a_count + b_count == 200
    assert min(a_count, b_count) > 0  # the kernel spread the connections
    assert min(a_cpu, b_cpu) > 0
