"""The built-in policies (plugins/gateway_policies) end to end over loopback,
each through the real gateway with real DNS and a real receiving MX."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.testing import free_port
from gateway.testing.dkim import DkimpyVerifier, public_record, txt_zone_line, write_key
from gateway.testing.pytest_plugin import PluginGateway

GatewayFactory = Callable[..., PluginGateway]


def http(method: str, url: str, body: bytes | dict[str, Any] | None = None) -> tuple[int, str]:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def suppression_cli(gw: PluginGateway, *args: str, stdin: str = "") -> str:
    run = [sys.executable, "-m", "gateway_policies.suppression", *args]
    out = subprocess.run(
        [*run, "--config", str(gw.process.config_path)],
        input=stdin,
        capture_output=True,
        text=True,
        check=True,
        env=os.environ,
    )
    return out.stdout


def marketing(sender: str, rcpt: str, subject: str = "offer") -> bytes:
    return (
        f"From: {sender}\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
        "X-Gateway-Stream: marketing\r\n\r\nBuy now\r\n"
    ).encode()


def test_suppressed_and_consentless_recipients_are_refused_at_rcpt(
    plugin_gateway: GatewayFactory,
) -> None:
    gw = plugin_gateway(
        ["suppression", "consent"],
        settings={"consent": {"sender_streams": {"news.shop.test": "marketing"}}},
    )
    for rcpt in ("ann@example.test", "carl@example.test"):
        status, _ = gw.admin(
            "POST",
            "/consent",
            {"recipient": rcpt, "list": "news.shop.test", "method": "single-opt-in",
             "source": "https://shop.test/signup"},
        )  # fmt: skip
        assert status == 200
    status, records = gw.admin("GET", "/consent?recipient=ann@example.test")
    assert status == 200
    assert [(r["list"], r["method"], r["source"]) for r in records] == [
        ("news.shop.test", "single-opt-in", "https://shop.test/signup")
    ]
    status, exported = gw.admin("GET", "/consent/export")
    assert exported.splitlines()[0].startswith("recipient,list,method,recorded_at")
    assert len(exported.splitlines()) == 3
    # Suppress carl through the CSV import while the gateway runs.
    suppression_cli(gw, "import", "-", stdin="address,reason\ncarl@example.test,manual\n")
    time.sleep(1.2)  # the gateway notices another process's writes within a second
    rcpts = ["ann@example.test", "bob@example.test", "carl@example.test"]
    result = gw.send("news@news.shop.test", rcpts)
    assert result.refused == {
        "bob@example.test": "550 5.7.1 No consent on record for marketing mail to this recipient",
        "carl@example.test": "550 5.7.1 Recipient is on a suppression list (manual)",
    }
    (got,) = gw.mx.wait_for(1)
    assert got.rcpt_tos == ["ann@example.test"]
    # The stream told only by the header: the check runs at the end of DATA.
    late = gw.send("app@shop.test", ["ann@example.test"], marketing("app@shop.test", "ann"))
    assert late.qid is None
    assert late.data_reply.startswith("550 5.7.1 No consent on record for marketing mail to 1 of 1")
    exported = suppression_cli(gw, "export")
    assert "carl@example.test,*,manual," in exported


def test_a_hard_bounce_suppresses_the_recipient(plugin_gateway: GatewayFactory) -> None:
    def mx_policy(address: str, count: int) -> str | None:
        return "550 5.1.1 <gone@example.test>: user unknown" if address.startswith("gone") else None

    gw = plugin_gateway(["bounce_classes", "suppression"], rcpt_policy=mx_policy)
    first = gw.send("app@shop.test", ["gone@example.test"])
    bounced = gw.wait_event("bounced", qid=first.qid)
    assert bounced["bounce_class"] == "invalid-recipient"
    gw.wait_event("suppressed", address="gone@example.test")
    again = gw.send("app@other.test", ["gone@example.test", "ann@example.test"])
    assert again.refused == {
        "gone@example.test": "550 5.7.1 Recipient is on a suppression list (hard-bounce)"
    }


def test_one_click_unsubscribe_headers_are_signed_and_the_post_suppresses(
    tmp_path: Path, plugin_gateway: GatewayFactory
) -> None:
    key = write_key(tmp_path / "shop.pem", "rsa2048")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    gw = plugin_gateway(
        ["suppression", "unsubscribe"],
        settings={"unsubscribe": {"secret": "s3cret-s3cret-s3cret", "mailto": "unsub@shop.test"}},
        config={
            "http": {"listen": f"127.0.0.1:{port}", "public_url": url},
            "dkim": {"keys": [{"domain": "shop.test", "selector": "s1", "key_file": str(key)}]},
        },
        zone=[txt_zone_line("s1._domainkey.shop", public_record(key))],
    )
    gw.send("news@shop.test", ["ann@example.test"], marketing("news@shop.test", "ann@example.test"))
    (got,) = gw.mx.wait_for(1)
    assert b"X-Gateway-Stream" not in got.content
    (check,) = DkimpyVerifier(gw.dns.address, gw.dns.port).verify(got.content)
    assert check.ok, check
    signed = re.search(rb"h=([^;]+);", got.content.replace(b"\r\n\t", b"").replace(b" ", b""))
    assert signed is not None
    assert {b"list-unsubscribe", b"list-unsubscribe-post"} <= set(
        signed.group(1).lower().split(b":")
    )
    found = re.search(rb"List-Unsubscribe: <(http://[^>]+)>, <mailto:unsub@shop.test", got.content)
    assert found is not None
    assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in got.content
    link = found.group(1).decode()
    forged = link[:-3] + ("AAA" if not link.endswith("AAA") else "BBB")
    assert http("POST", forged, b"List-Unsubscribe=One-Click")[0] == 403
    other = link.replace("/unsubscribe/", "/unsubscribe/x")
    assert http("POST", other, b"List-Unsubscribe=One-Click")[0] == 403
    status, page = http("GET", link)
    assert status == 200
    assert "Unsubscribe ann@example.test" in page
    assert http("POST", link, b"List-Unsubscribe=One-Click") == (200, "You are unsubscribed.\n")
    gw.wait_event("suppressed", address="ann@example.test", reason="unsubscribe")
    again = gw.send("news@shop.test", ["ann@example.test"])
    assert again.refused == {
        "ann@example.test": "550 5.7.1 Recipient is on a suppression list (unsubscribe)"
    }
    assert gw.send("app@elsewhere.test", ["ann@example.test"]).refused == {}


def egress(pools: list[dict[str, Any]], default_pool: str = "") -> dict[str, Any]:
    return {
        "sources": [
            {"name": "a", "address": "127.0.0.31"},
            {"name": "b", "address": "127.0.0.32"},
            {"name": "c", "address": "127.0.0.33"},
        ],
        "pools": pools,
        "default_pool": default_pool,
    }


def test_rotation_routes_by_stream_and_spreads_by_weight(plugin_gateway: GatewayFactory) -> None:
    gw = plugin_gateway(
        ["rotation"],
        settings={"rotation": {"rules": [{"stream": "marketing", "pool": "bulk"}]}},
        config={
            "egress": egress(
                [
                    {"name": "bulk", "sources": {"a": 2, "b": 1}},
                    {"name": "txn", "sources": {"c": 1}},
                ],
                default_pool="txn",
            ),
            "delivery": {"max_messages_per_connection": 1},
        },
    )
    for n in range(6):
        rcpt = f"m{n}@example.test"
        gw.send("news@shop.test", [rcpt], marketing("news@shop.test", rcpt))
    for n in range(2):
        gw.send("app@shop.test", [f"t{n}@example.test"])
    got = gw.mx.wait_for(8)
    by_source = Counter((m.rcpt_tos[0][0], m.peer) for m in got)
    assert by_source == {("m", "127.0.0.31"): 4, ("m", "127.0.0.32"): 2, ("t", "127.0.0.33"): 2}


def test_warmup_caps_hold_and_the_overflow_goes_to_the_warm_source(
    plugin_gateway: GatewayFactory,
) -> None:
    gw = plugin_gateway(
        ["warmup"],
        settings={"warmup": {"sources": ["a"], "schedule": [3, 10], "providers": ["other"]}},
        config={
            "egress": egress([{"name": "ab", "sources": {"a": 1, "b": 1}}], default_pool="ab"),
            "delivery": {"max_messages_per_connection": 1},
        },
    )
    # One at a time: the node takes source a's cap from the store in blocks
    # (here 2, then 1), and while it fetches the next block a counts as
    # unavailable, so a message arriving in those milliseconds goes through b.
    # Sent in a burst, a may send 2 of its 3; waiting for each delivery gives
    # every fetch time to finish, so a's whole cap is used.
    for n in range(12):
        gw.send("app@shop.test", [f"w{n}@example.test"])
        gw.mx.wait_for(n + 1)
    got = gw.mx.wait_for(12)
    assert Counter(m.peer for m in got) == {"127.0.0.31": 3, "127.0.0.32": 9}


def test_the_suppression_admin_api(plugin_gateway: GatewayFactory) -> None:
    gw = plugin_gateway(["suppression"])
    entry = {"address": "Ann@Example.test", "scope": "shop.test", "reason": "complaint"}
    assert gw.admin("POST", "/suppression", entry)[0] == 200
    assert gw.admin("POST", "/suppression", {"address": "x"})[0] == 400
    status, found = gw.admin("GET", "/suppression?address=ann@example.test")
    assert status == 200
    assert [(f["address"], f["scope"], f["reason"]) for f in found] == [
        ("ann@example.test", "shop.test", "complaint")
    ]
    csv_rows = "address,scope,reason\n" + "".join(
        f"u{n}@example.test,*,manual\n" for n in range(2500)
    )
    assert gw.admin("POST", "/suppression/import", csv_rows.encode()) == (200, {"imported": 2500})
    bad = "address,reason\nnot-an-address,manual\n"
    status, answer = gw.admin("POST", "/suppression/import", bad.encode())
    assert status == 400
    assert "line 2" in answer["error"]
    status, exported = gw.admin("GET", "/suppression/export")
    assert status == 200
    lines = exported.splitlines()
    assert lines[0] == "address,scope,reason,at,source,expires_at"
    assert len(lines) == 1 + 2501
    assert gw.send("app@shop.test", ["u7@example.test"]).refused
    assert gw.admin("DELETE", "/suppression", {"address": "u7@example.test"}) == (
        200,
        {"removed": True},
    )
    assert gw.send("app@shop.test", ["u7@example.test"]).refused == {}
