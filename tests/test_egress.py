"""Egress sources: outbound connections bind to the configured addresses and
say the configured EHLO names; a pool's weights decide how often each is used."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from gateway.testing import GatewayProcess, Receiver
from tests.helpers import send
from tests.zones import MX


def test_sources_are_bound_by_weight_with_their_ehlo_names(
    tmp_path: Path, base_config: dict[str, Any], mx_port: int
) -> None:
    config = {
        **base_config,
        "delivery": {**base_config["delivery"], "max_messages_per_connection": 1},
        "egress": {
            "sources": [
                {"name": "a", "address": "127.0.0.31", "ehlo": "mta-a.sender.test"},
                {"name": "b", "address": "127.0.0.32", "ehlo": "mta-b.sender.test"},
            ],
            "pools": [{"name": "main", "sources": {"a": 2, "b": 1}}],
            "default_pool": "main",
        },
    }
    with Receiver(MX["good1"], mx_port) as mx, GatewayProcess(tmp_path, config) as gw:
        qids = [send(gw.port, "app@sender.test", [f"r{n}@good.test"]) for n in range(6)]
        for qid in qids:
            delivered = gw.wait_event("delivered", qid=qid)
            assert delivered["source"] in ("a", "b")
        got = mx.wait_for(6)
    seen = Counter((m.peer, m.helo) for m in got)
    assert seen == {
        ("127.0.0.31", "mta-a.sender.test"): 4,
        ("127.0.0.32", "mta-b.sender.test"): 2,
    }


def test_an_address_this_host_lacks_stops_start(tmp_path: Path) -> None:
    conf = tmp_path / "g.toml"
    conf.write_text(
        '[[egress.sources]]\nname = "far"\naddress = "192.0.2.77"\n'  # TEST-NET-1, not ours
    )
    run = [sys.executable, "-m", "gateway", "check-config", str(conf)]
    out = subprocess.run(run, capture_output=True, text=True, check=False)
    assert out.returncode == 2
    assert "egress source far: cannot bind 192.0.2.77" in out.stderr


def test_a_source_at_its_limit_is_passed_over_for_one_with_capacity(
    tmp_path: Path, base_config: dict[str, Any], mx_port: int
) -> None:
    """Sources a and b weigh the same, but a may send only 2 an hour: after its
    2, the scheduler gives the rest to b instead of letting mail wait for a."""
    config = {
        **base_config,
        "delivery": {**base_config["delivery"], "max_messages_per_connection": 1},
        "egress": {
            "sources": [
                {"name": "a", "address": "127.0.0.31", "message_rate": "2/h"},
                {"name": "b", "address": "127.0.0.32"},
            ],
        },
    }
    with Receiver(MX["good1"], mx_port) as mx, GatewayProcess(tmp_path, config) as gw:
        qids = [send(gw.port, "app@sender.test", [f"cap{n}@good.test"]) for n in range(8)]
        for qid in qids:
            gw.wait_event("delivered", qid=qid)
        got = mx.wait_for(8)
    assert Counter(m.peer for m in got) == {"127.0.0.31": 2, "127.0.0.32": 6}
