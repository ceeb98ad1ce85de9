"""The compliance plugin end to end: each check and each action it allows."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from gateway.testing.pytest_plugin import PluginGateway

GatewayFactory = Callable[..., PluginGateway]


def message(from_: str, extra: str = "", dated: bool = True) -> bytes:
    head = f"From: {from_}\r\nTo: ann@example.test\r\nSubject: hi\r\n{extra}"
    if dated:
        head += "Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <m1@shop.test>\r\n"
    return (head + "\r\nhello\r\n").encode()


def findings(gw: PluginGateway) -> dict[str, float]:
    status, text = gw.admin("GET", "/metrics")
    assert status == 200
    return {
        sample.labels["kind"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "gateway_plugin_events_total" and sample.labels["plugin"] == "compliance"
    }


def test_defaults_reject_freemail_from_and_tag_misalignment(
    plugin_gateway: GatewayFactory,
) -> None:
    gw = plugin_gateway(["compliance"])
    free = gw.send("app@shop.test", ["ann@example.test"], message("someone@gmail.com"))
    assert free.qid is None
    assert free.data_reply.startswith("550 5.7.26 Not compliant (freemail_from)")
    aligned = gw.send("bounce@mail.shop.test", ["ann@example.test"], message("news@shop.test"))
    assert aligned.qid is not None
    tagged = gw.send("bounce@esp.test", ["ann@example.test"], message("news@shop.test"))
    assert tagged.qid is not None
    finding = gw.wait_event("compliance", qid=tagged.qid)
    assert (finding["check"], finding["action"]) == ("alignment", "tag")
    gw.mx.wait_for(2)
    # The gmail.com From is misaligned too: two alignment findings.
    assert findings(gw) == {"freemail_from:reject": 1.0, "alignment:tag": 2.0}


def test_rejecting_misalignment_headers_and_missing_unsubscribe(
    plugin_gateway: GatewayFactory,
) -> None:
    actions = {"alignment": "reject", "headers": "reject", "unsubscribe": "reject"}
    gw = plugin_gateway(
        ["compliance"],
        settings={"compliance": {"actions": actions}},
        config={"message": {"add_date": False, "add_message_id": False}},
    )
    unaligned = gw.send("bounce@esp.test", ["ann@example.test"], message("news@shop.test"))
    assert unaligned.data_reply.startswith("550 5.7.26 Not compliant (alignment)")
    undated = gw.send("app@shop.test", ["ann@example.test"], message("app@shop.test", dated=False))
    assert undated.data_reply.startswith("550 5.6.0 Not compliant (headers): From x1, missing Date")
    bulk = "X-Gateway-Stream: marketing\r\n"
    plain = gw.send("app@shop.test", ["ann@example.test"], message("app@shop.test", bulk))
    assert plain.data_reply.startswith("550 5.7.1 Not compliant (unsubscribe)")
    one_click = (
        bulk + "List-Unsubscribe: <https://shop.test/u/1>\r\n"
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    )
    good = gw.send("app@shop.test", ["ann@example.test"], message("app@shop.test", one_click))
    assert good.qid is not None


def test_fixing_missing_date_and_message_id(plugin_gateway: GatewayFactory) -> None:
    gw = plugin_gateway(
        ["compliance"], config={"message": {"add_date": False, "add_message_id": False}}
    )
    sent = gw.send("app@shop.test", ["ann@example.test"], message("app@shop.test", dated=False))
    assert sent.qid is not None
    (got,) = gw.mx.wait_for(1)
    assert b"\r\nDate: " in got.content
    assert f"Message-ID: <{sent.qid}@gateway.test>".encode() in got.content
