"""The admin verbs of the `gateway` command against a running gateway."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from gateway.testing import GatewayProcess, Receiver
from gateway.testing.client import send_message
from tests.helpers import make_message, send
from tests.zones import MX


def cli(gw: GatewayProcess, *args: str) -> str:
    run = [sys.executable, "-m", "gateway", *args, "--config", str(gw.config_path)]
    out = subprocess.run(run, capture_output=True, text=True, check=False, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_admin_verbs(tmp_path: Path, base_config: dict[str, Any], mx_port: int) -> None:
    config = {**base_config, "plugins": {"enabled": ["suppression"]}}
    with Receiver(MX["good1"], mx_port) as mx, GatewayProcess(tmp_path / "gw", config) as gw:
        assert '"scope": "*"' in cli(gw, "suppression", "add", "ann@good.test")
        found = cli(gw, "suppression", "search", "ann@good.test")
        assert found.splitlines()[0].split()[:3] == ["ADDRESS", "SCOPE", "REASON"]
        assert found.splitlines()[1].split()[:3] == ["ann@good.test", "*", "manual"]
        rows = tmp_path / "in.csv"
        rows.write_text("address\n" + "".join(f"r{n}@good.test\n" for n in range(300)))
        assert cli(gw, "suppression", "import", str(rows)).strip() == "imported 300 entries"
        exported = tmp_path / "out.csv"
        cli(gw, "suppression", "export", str(exported))
        assert len(exported.read_text().splitlines()) == 1 + 301
        cli(gw, "suppression", "remove", "ann@good.test")
        assert len(cli(gw, "suppression", "search", "ann@good.test").splitlines()) == 1
        cli(gw, "suspend", "--site", "nowhere.test", "--seconds", "600", "--reason", "maintenance")
        holds = cli(gw, "holds")
        assert "site=nowhere.test" in holds
        assert "maintenance" in holds
        assert cli(gw, "resume", "--site", "nowhere.test").strip() == '{"resumed": true}'
        message = tmp_path / "m.eml"
        message.write_bytes(b"From: app@sender.test\r\nSubject: cli\r\n\r\nhi\r\n")
        injected = cli(
            gw, "inject", "--from", "app@sender.test", "--to", "bob@good.test", str(message)
        )
        assert '"qid": "' in injected
        (got,) = mx.wait_for(1)
        assert got.rcpt_tos == ["bob@good.test"]
        assert cli(gw, "queue").startswith("SITE")


def test_summaries_and_removing_queued_mail(
    tmp_path: Path, base_config: dict[str, Any], mx_port: int
) -> None:
    """Mail to down.test waits (nothing listens there); the operator sees it by
    tenant, bounces one tenant's (the sender gets DSNs) and deletes the rest."""
    config = {**base_config, "plugins": {"enabled": []}}
    with (
        Receiver(MX["sender"], mx_port) as sender_mx,
        GatewayProcess(tmp_path / "gw", config) as gw,
    ):
        for n, tenant in enumerate(["shop", "shop", "blog"]):
            data = make_message(f"m{n}").replace(
                b"Subject:", f"X-Gateway-Tenant: {tenant}\r\nSubject:".encode()
            )
            qid = send(gw.port, "app@sender.test", [f"r{n}@down.test"], data)
            gw.wait_event("deferred", qid=qid)
        by_tenant = cli(gw, "queue", "--by", "tenant").splitlines()
        assert by_tenant[0].split() == ["TENANT", "MESSAGES", "RECIPIENTS"]
        assert sorted(line.split() for line in by_tenant[1:]) == [
            ["blog", "1", "1"],
            ["shop", "2", "2"],
        ]
        bounced = cli(
            gw, "remove", "--tenant", "shop", "--action", "bounce", "--reason", "campaign withdrawn"
        )
        assert len(json.loads(bounced)["bounced"]) == 2
        dsns = sender_mx.wait_for(2)
        assert all(b"campaign withdrawn" in m.content for m in dsns)
        cli(gw, "remove", "--tenant", "blog", "--action", "delete")
        assert cli(gw, "queue", "--by", "tenant").splitlines()[1:] == []


def test_the_consent_verbs_decide_what_marketing_mail_goes(
    tmp_path: Path, base_config: dict[str, Any], mx_port: int
) -> None:
    """Consent imported from CSV (a CRM's export) lets marketing mail through;
    a withdrawn row, an unconfirmed double opt-in and a stranger are refused."""
    config = {
        **base_config,
        "plugins": {"enabled": ["consent"]},
        "plugin": {"consent": {"sender_streams": {"news.shop.test": "marketing"}}},
    }
    with Receiver(MX["good1"], mx_port) as mx, GatewayProcess(tmp_path / "gw", config) as gw:
        rows = tmp_path / "crm.csv"
        rows.write_text(
            "recipient,list,method,confirmed_at,source,withdrawn_at\n"
            + "".join(f"r{n}@good.test,news.shop.test,,,crm,\n" for n in range(250))
            + "gone@good.test,news.shop.test,single-opt-in,1700000000,crm,1750000000\n"
        )
        assert cli(gw, "consent", "import", str(rows)).strip() == "imported 251 entries"
        added = cli(gw, "consent", "add", "new@good.test", "--list", "news.shop.test",
                    "--method", "double-opt-in", "--source", "https://shop.test/form")  # fmt: skip
        assert json.loads(added)["confirmed_at"] is None  # waits for the click
        found = cli(gw, "consent", "search", "r7@good.test").splitlines()
        assert found[0].split()[:3] == ["RECIPIENT", "LIST", "METHOD"]
        assert found[1].split()[:3] == ["r7@good.test", "news.shop.test", "imported"]

        rcpts = ["r7@good.test", "gone@good.test", "new@good.test", "stranger@good.test"]
        result = send_message(gw.port, "news@news.shop.test", rcpts, make_message("c")).refused
        assert sorted(result) == ["gone@good.test", "new@good.test", "stranger@good.test"]
        cli(gw, "consent", "confirm", "new@good.test", "--list", "news.shop.test")
        cli(gw, "consent", "withdraw", "r7@good.test", "--list", "news.shop.test")
        again = ["r7@good.test", "new@good.test"]
        result = send_message(gw.port, "news@news.shop.test", again, make_message("d")).refused
        assert sorted(result) == ["r7@good.test"]
        assert sorted(r for m in mx.wait_for(2) for r in m.rcpt_tos) == [
            "new@good.test",
            "r7@good.test",
        ]

        exported = tmp_path / "out.csv"
        cli(gw, "consent", "export", str(exported))
        lines = exported.read_text().splitlines()
        assert lines[0] == "recipient,list,method,recorded_at,confirmed_at,source,withdrawn_at"
        assert len(lines) == 1 + 252

        bad = tmp_path / "bad.csv"
        bad.write_text("recipient,list\nok@good.test,l\nnot-an-address,l\n")
        run = [sys.executable, "-m", "gateway", "consent", "import", str(bad),
               "--config", str(gw.config_path)]  # fmt: skip
        out = subprocess.run(run, capture_output=True, text=True, check=False, timeout=60)
        assert out.returncode != 0
        assert "400: line 3: recipient (an address) and list are required" in out.stderr
