"""End to end over loopback: client -> gateway -> real DNS -> real MX servers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.testing import GatewayProcess, Receiver, RefusingServer
from tests.helpers import dsn_fields, make_message, parse, part, send
from tests.zones import MX


class Mx:
    """The receiving side of the module: one real SMTP server per MX address."""

    def __init__(self, port: int) -> None:
        self.good1 = Receiver(MX["good1"], port)
        self.good2 = Receiver(MX["good2"], port)
        self.fallback_554 = RefusingServer(MX["fallback_554"], port, "554 5.3.2 No SMTP here")
        self.fallback_ok = Receiver(MX["fallback_ok"], port)
        self.implicit = Receiver(MX["implicit"], port)
        self.tempfail = Receiver(
            MX["tempfail"], port, rcpt_policy=lambda a, n: "451 4.7.1 Try later" if n == 1 else None
        )
        self.reject = Receiver(
            MX["reject"],
            port,
            rcpt_policy=lambda a, n: "550 5.1.1 No such user" if a.startswith("unknown") else None,
        )
        self.sender = Receiver(MX["sender"], port)
        self.all: list[Receiver | RefusingServer] = [
            self.good1,
            self.good2,
            self.fallback_554,
            self.fallback_ok,
            self.implicit,
            self.tempfail,
            self.reject,
            self.sender,
        ]

    def dsns_about(self, rcpt: str, count: int = 1, timeout: float = 15.0) -> list[Any]:
        """DSNs that reached the sender domain's MX and name `rcpt`."""
        deadline = time.monotonic() + timeout
        while True:
            found = [
                m
                for m in self.sender.messages
                if m.mail_from == "" and f"rfc822; {rcpt}".encode() in m.content
            ]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


@pytest.fixture(scope="module")
def mx(mx_port: int) -> Iterator[Mx]:
    servers = Mx(mx_port)
    for s in servers.all:
        s.start()
    yield servers
    for s in servers.all:
        s.stop()


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, base_config: dict[str, Any], mx: Mx
) -> Iterator[GatewayProcess]:
    config = {**base_config, "smtp": {"max_recipients": 5}}
    with GatewayProcess(tmp_path_factory.mktemp("gw"), config) as gw:
        yield gw


def test_mx_preference_lowest_first(gateway: GatewayProcess, mx: Mx) -> None:
    qid = send(gateway.port, "app@sender.test", ["alice@good.test"])
    mx.good1.wait_for(1)
    assert [m.rcpt_tos for m in mx.good1.received_by("alice@good.test")] == [["alice@good.test"]]
    assert mx.good2.received_by("alice@good.test") == []
    event = gateway.wait_event("delivered", qid=qid)
    assert event["mx"] == "mx1.good.test"
    assert event["status"] == "2.0.0"


def test_next_mx_when_first_refuse(gateway: GatewayProcess, mx: Mx) -> None:
    qid = send(gateway.port, "app@sender.test", ["bob@fallback.test"])
    gateway.wait_event("delivered", qid=qid)
    assert len(mx.fallback_ok.received_by("bob@fallback.test")) == 1
    assert mx.fallback_554.connections >= 1
    failed = {e["mx"] for e in gateway.events("connect_failed")}
    assert {"mx1.fallback.test", "mx2.fallback.test"} <= failed


def test_implicit_mx_uses_address_record(gateway: GatewayProcess, mx: Mx) -> None:
    qid = send(gateway.port, "app@sender.test", ["carol@implicit.test"])
    gateway.wait_event("delivered", qid=qid)
    assert len(mx.implicit.received_by("carol@implicit.test")) == 1


@pytest.mark.parametrize(
    ("rcpt", "status"),
    [("dave@nullmx.test", "5.1.10"), ("erin@nosuch.test", "5.1.2")],
    ids=["null-mx", "nxdomain"],
)
def test_permanent_dns_failures_bounce_with_dsn(
    gateway: GatewayProcess, mx: Mx, rcpt: str, status: str
) -> None:
    qid = send(gateway.port, "app@sender.test", [rcpt])
    event = gateway.wait_event("bounced", qid=qid)
    assert event["status"] == status
    (dsn,) = mx.dsns_about(rcpt)
    _, recipients = dsn_fields(parse(dsn.content))
    assert recipients[0]["Status"] == status
    assert recipients[0]["Action"] == "failed"


def test_servfail_is_retried_not_bounced(gateway: GatewayProcess) -> None:
    qid = send(gateway.port, "app@sender.test", ["frank@servfail.test"])
    first = gateway.wait_event("deferred", qid=qid, attempts=1)
    assert first["status"] == "4.4.3"
    gateway.wait_event("deferred", qid=qid, attempts=2, timeout=10)
    assert not [e for e in gateway.events("bounced") if e["qid"] == qid]


def test_4xx_then_success_on_retry(gateway: GatewayProcess, mx: Mx) -> None:
    qid = send(gateway.port, "app@sender.test", ["gina@tempfail.test"])
    deferred = gateway.wait_event("deferred", qid=qid)
    assert deferred["reply"].startswith("451 4.7.1")
    delivered = gateway.wait_event("delivered", qid=qid, timeout=20)
    assert delivered["attempts"] == 2
    assert len(mx.tempfail.received_by("gina@tempfail.test")) == 1


def test_5xx_sends_rfc3464_dsn_to_sender(gateway: GatewayProcess, mx: Mx) -> None:
    data = make_message(subject="will bounce")
    qid = send(gateway.port, "app@sender.test", ["unknown1@reject.test"], data)
    gateway.wait_event("bounced", qid=qid)
    (dsn,) = mx.dsns_about("unknown1@reject.test")
    assert dsn.mail_from == ""  # null sender: a DSN is never answered
    assert dsn.rcpt_tos == ["app@sender.test"]
    message = parse(dsn.content)
    assert message["Auto-Submitted"] == "auto-replied"
    per_message, (rcpt,) = dsn_fields(message)
    assert per_message["Reporting-MTA"] == "dns; gateway.test"
    assert rcpt["Final-Recipient"] == "rfc822; unknown1@reject.test"
    assert rcpt["Action"] == "failed"
    assert rcpt["Status"] == "5.1.1"
    assert rcpt["Remote-MTA"] == "dns; reject.test"
    assert rcpt["Diagnostic-Code"].startswith("smtp; 550 5.1.1 No such user")
    headers = part(message, "text/rfc822-headers")
    assert b"Subject: will bounce" in headers.as_bytes()


def test_no_dsn_for_null_sender(gateway: GatewayProcess, mx: Mx) -> None:
    qid = send(gateway.port, "<>", ["unknown2@reject.test"])
    gateway.wait_event("bounced", qid=qid)
    gateway.wait_event("finished", qid=qid)
    assert not [e for e in gateway.events("dsn_queued") if e["original"] == qid]
    assert mx.dsns_about("unknown2@reject.test", timeout=0.5) == []


def test_multi_domain_message_is_split_per_destination(gateway: GatewayProcess, mx: Mx) -> None:
    rcpts = ["h1@good.test", "h2@good.test", "h3@implicit.test", "unknown3@reject.test"]
    qid = send(gateway.port, "app@sender.test", rcpts, make_message("split"))
    gateway.wait_event("finished", qid=qid)
    assert [m.rcpt_tos for m in mx.good1.received_by("h1@good.test")] == [
        ["h1@good.test", "h2@good.test"]
    ]
    assert [m.rcpt_tos for m in mx.implicit.received_by("h3@implicit.test")] == [
        ["h3@implicit.test"]
    ]
    outcomes = {
        e["rcpt"]: e["event"] for e in gateway.events() if e.get("qid") == qid and "rcpt" in e
    }
    assert outcomes == {
        "h1@good.test": "delivered",
        "h2@good.test": "delivered",
        "h3@implicit.test": "delivered",
        "unknown3@reject.test": "bounced",
    }
    (dsn,) = mx.dsns_about("unknown3@reject.test")
    _, dsn_rcpts = dsn_fields(parse(dsn.content))
    assert [r["Final-Recipient"] for r in dsn_rcpts] == ["rfc822; unknown3@reject.test"]


def test_spool_is_empty_once_everything_is_final(gateway: GatewayProcess, mx: Mx) -> None:
    qid = send(gateway.port, "app@sender.test", ["ivan@good.test"])
    gateway.wait_event("finished", qid=qid)
    assert not [f for f in gateway.spool_files() if f.startswith(qid)]


def test_received_header_and_line_endings(gateway: GatewayProcess, mx: Mx) -> None:
    data = b"From: a@sender.test\nSubject: bare lf\nMessage-ID: <lf@sender.test>\n\none\ntwo\n"
    qid = send(gateway.port, "app@sender.test", ["judy@good.test"], data)
    gateway.wait_event("delivered", qid=qid)
    (got,) = mx.good1.received_by("judy@good.test")
    assert got.content.startswith(b"Received: from client.test ([127.0.0.1])")
    assert f"id {qid}".encode() in got.content
    assert b"\n" not in got.content.replace(b"\r\n", b"")
    received = gateway.wait_event("received", qid=qid)
    assert received["bare_lf"] == 6


def test_lines_starting_with_dots_arrive_as_sent(gateway: GatewayProcess, mx: Mx) -> None:
    """Dot-stuffing on the way in and out (RFC 5321 4.5.2): lines that start
    with dots, a lone dot and a line of two dots reach the MX unchanged."""
    body = b".starts with a dot\r\n..two dots\r\n.\r\n..\r\nend.\r\n"
    head = b"From: a@sender.test\r\nSubject: dots\r\nMessage-ID: <dots@sender.test>\r\n\r\n"
    qid = send(gateway.port, "app@sender.test", ["dots@good.test"], head + body)
    gateway.wait_event("delivered", qid=qid)
    (got,) = mx.good1.received_by("dots@good.test")
    assert got.content.endswith(b"\r\n\r\n" + body)


def test_domains_with_the_same_mx_hosts_share_one_connection(
    tmp_path: Path, base_config: dict[str, Any], mx: Mx
) -> None:
    """MX rollup: good.test and rollup.test list the same MX hosts, so they are one
    site; with one connection per site, both go over the same connection."""
    limits = {"max_connections_per_destination": 1, "max_messages_per_connection": 10}
    config = {**base_config, "delivery": {**base_config["delivery"], **limits}}
    with GatewayProcess(tmp_path, config) as gw:
        qid = send(gw.port, "app@sender.test", ["ann@good.test", "bob@rollup.test"])
        for rcpt in ("ann@good.test", "bob@rollup.test"):
            gw.wait_event("delivered", qid=qid, rcpt=rcpt)
    (ann,) = mx.good1.received_by("ann@good.test")
    (bob,) = mx.good1.received_by("bob@rollup.test")
    assert ann.client_port == bob.client_port  # one connection, two transactions


def test_a_site_message_rate_holds(tmp_path: Path, base_config: dict[str, Any], mx: Mx) -> None:
    """25 messages to one site at 10/s (a burst of 10, then one per 100 ms) take
    at least (25 - 10) / 10 = 1.5 s from the first delivery to the last."""
    rules = tmp_path / "shaping.toml"
    rules.write_text('[domain."good.test"]\nmessage_rate = "10/s"\n')
    config = {**base_config, "delivery": {**base_config["delivery"], "shaping_files": [str(rules)]}}
    with GatewayProcess(tmp_path / "gw", config) as gw:
        qids = [send(gw.port, "app@sender.test", [f"rate{n}@good.test"]) for n in range(25)]
        times = [gw.wait_event("delivered", qid=qid)["ts"] for qid in qids]
    assert max(times) - min(times) >= 1.45


def test_a_site_connection_limit_holds(
    tmp_path: Path, base_config: dict[str, Any], mx_port: int
) -> None:
    """With max_connections = 2 for the site, the receiving server never sees more
    than two connections at once, though 12 slow deliveries are waiting."""
    rules = tmp_path / "shaping.toml"
    rules.write_text('[domain."slowconn.test"]\nmax_connections = 2\n')
    config = {**base_config, "delivery": {**base_config["delivery"], "shaping_files": [str(rules)]}}
    with (
        Receiver(MX["slowconn"], mx_port, data_delay=0.2) as slow,
        GatewayProcess(tmp_path / "gw", config) as gw,
    ):
        qids = [send(gw.port, "app@sender.test", [f"c{n}@slowconn.test"]) for n in range(12)]
        for qid in qids:
            gw.wait_event("delivered", qid=qid)
    assert slow.most_open_connections == 2


def test_a_site_timeout_overrides_the_global_one(
    tmp_path: Path, base_config: dict[str, Any], mx_port: int
) -> None:
    """slowconn.test answers DATA after 0.5 s; its own data_done timeout of 0.2 s
    (the global one is 600 s) turns that into a deferral."""
    rules = tmp_path / "shaping.toml"
    rules.write_text('[domain."slowconn.test".timeouts]\ndata_done = 0.2\n')
    config = {**base_config, "delivery": {**base_config["delivery"], "shaping_files": [str(rules)]}}
    with (
        Receiver(MX["slowconn"], mx_port, data_delay=0.5),
        GatewayProcess(tmp_path / "gw", config) as gw,
    ):
        qid = send(gw.port, "app@sender.test", ["late@slowconn.test"])
        deferred = gw.wait_event("deferred", qid=qid)
    assert "timeout" in deferred["reply"].lower() or "timed out" in deferred["reply"].lower()


def test_automation_suspends_a_site_then_traffic_resumes_gradually(
    tmp_path: Path, base_config: dict[str, Any], mx_port: int
) -> None:
    """Two 4.7.28 deferrals within a minute suspend the site (rate 8/s) for 2 s.
    Nothing is delivered meanwhile; then the rate starts again at a quarter
    (2/s: a burst of 2, one per 0.5 s) and climbs a quarter per clean 2 s.
    At the full rate the 20 waiting messages would all go within 1.5 s."""
    rules = tmp_path / "shaping.toml"
    rules.write_text(
        '[domain."throttled.test"]\nmessage_rate = "8/s"\n'
        '[[domain."throttled.test".automation]]\n'
        "match = '4\\.7\\.28'\n"
        'trigger = "2 in 1m"\naction = "suspend"\nduration = "2s"\nfactor = 0.25\n'
    )
    config = {
        **base_config,
        "delivery": {**base_config["delivery"], "shaping_files": [str(rules)]},
        "retry": {"first_interval": "1s", "jitter": 0.0},
    }
    throttle = "421 4.7.28 Our system has detected an unusual rate of unsolicited mail"
    with (
        Receiver(
            MX["throttled"],
            mx_port,
            rcpt_policy=lambda a, n: throttle if a.startswith("t") and n == 1 else None,
        ),
        GatewayProcess(tmp_path / "gw", config) as gw,
    ):
        qids = [send(gw.port, "app@sender.test", [f"t{n}@throttled.test"]) for n in range(2)]
        suspended = gw.wait_event("automation", action="suspend")
        qids += [send(gw.port, "app@sender.test", [f"r{n}@throttled.test"]) for n in range(20)]
        times = [gw.wait_event("delivered", qid=qid, timeout=30)["ts"] for qid in qids]
    resumed = suspended["ts"] + 2.0
    assert min(times) >= resumed - 0.05
    first_period = [t for t in times if t < resumed + 2.0]
    assert len(first_period) <= 2 + 4 + 1  # burst, then one per 0.5 s (+1 for timing)
    assert max(times) - resumed >= 2.5


def test_tenant_and_campaign_headers_key_the_queue_and_are_removed(
    gateway: GatewayProcess, mx: Mx
) -> None:
    data = (
        b"From: app@sender.test\r\nX-Gateway-Tenant: acme\r\n"
        b"X-Gateway-Campaign: fall sale\r\n\t2026\r\nSubject: offer\r\n\r\nbody\r\n"
    )
    qid = send(gateway.port, "app@sender.test", ["tina@good.test"], data)
    received = gateway.wait_event("received", qid=qid)
    assert (received["tenant"], received["campaign"]) == ("acme", "fall-sale-2026")
    gateway.wait_event("delivered", qid=qid)
    (got,) = mx.good1.received_by("tina@good.test")
    assert b"X-Gateway" not in got.content
    assert b"\r\nSubject: offer\r\n\r\nbody\r\n" in got.content


def test_dns_timeout_is_retried(tmp_path_factory: pytest.TempPathFactory) -> None:
    import socket

    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a resolver that never answers
    silent.bind(("127.0.0.1", 0))
    config = {
        "dns": {"nameservers": ["127.0.0.1"], "port": silent.getsockname()[1], "timeout": "1s"},
        "retry": {"first_interval": "1s", "jitter": 0.0},
    }
    try:
        with GatewayProcess(tmp_path_factory.mktemp("dnstimeout"), config) as gw:
            qid = send(gw.port, "app@sender.test", ["slowdns@good.test"])
            event = gw.wait_event("deferred", qid=qid, attempts=1)
            assert event["status"] == "4.4.3"
            gw.wait_event("deferred", qid=qid, attempts=2)
            assert not gw.events("bounced")
    finally:
        silent.close()
