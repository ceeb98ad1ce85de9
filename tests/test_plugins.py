"""The plugin system end to end: plugins installed from a test directory
through their entry points, run by the real gateway; order, timeouts,
exceptions, tracing and settings errors."""

from __future__ import annotations

import os
import re
import smtplib
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.hookspecs import hook_names
from gateway.testing.certs import issue
from gateway.testing.client import client_tls
from gateway.testing.pytest_plugin import PluginGateway


def install(tmp_path: Path, plugins: dict[str, str], attr: str = "") -> dict[str, str]:
    """Write each plugin module with a dist-info that registers its entry point
    (the module, or its `attr`); the environment that makes a gateway process
    find them."""
    site = tmp_path / "site"
    dist = site / "test_plugins-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: test-plugins\nVersion: 0.1\n")
    lines = ["[gateway]"]
    for name, source in plugins.items():
        (site / f"{name}.py").write_text(textwrap.dedent(source))
        lines.append(f"{name} = {name}" + (f":{attr}" if attr else ""))
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return {"PYTHONPATH": str(site)}


GREYLIST_BOB = """
    from gateway import Decision, hookimpl

    @hookimpl
    def smtp_rcpt_to(recipient):
        if recipient.startswith("bob@"):
            return Decision.defer("Greylisted, try again later", code=450, status="4.7.1")
"""

RAISES = """
    from gateway import hookimpl

    @hookimpl
    def smtp_rcpt_to(recipient):
        raise RuntimeError("plugin bug")
"""

SLOW = """
    import asyncio
    from gateway import hookimpl

    @hookimpl
    async def smtp_rcpt_to(recipient):
        await asyncio.sleep(5)
"""

SAYS_A = """
    from gateway import Decision, hookimpl

    @hookimpl
    def smtp_rcpt_to(recipient):
        return Decision.reject("said by a", code=550, status="5.7.1")
"""

SAYS_B = SAYS_A.replace("said by a", "said by b")

GatewayFactory = Callable[..., PluginGateway]


def test_a_plugin_installed_from_a_directory_is_discovered_and_runs(
    tmp_path: Path, plugin_gateway: GatewayFactory
) -> None:
    env = install(tmp_path, {"greylist_bob": GREYLIST_BOB})
    gw = plugin_gateway(["greylist_bob"], env=env)
    assert gw.wait_event("started")["plugins"] == ["greylist_bob"]
    result = gw.send("app@shop.test", ["ann@example.test", "bob@example.test"])
    assert result.refused == {"bob@example.test": "450 4.7.1 Greylisted, try again later"}
    (got,) = gw.mx.wait_for(1)
    assert got.rcpt_tos == ["ann@example.test"]


def test_a_failing_plugin_is_logged_and_mail_still_flows(
    tmp_path: Path, plugin_gateway: GatewayFactory
) -> None:
    env = install(tmp_path, {"buggy": RAISES})
    gw = plugin_gateway(["buggy"], env=env)
    result = gw.send("app@shop.test", ["ann@example.test"])
    assert result.refused == {}
    error = gw.wait_event("plugin_error", plugin="buggy")
    assert (error["hook"], error["kind"]) == ("smtp_rcpt_to", "error")
    assert "plugin bug" in error["error"]
    gw.wait_event("delivered", qid=result.qid)


HEARS_DELIVERIES = """
    import asyncio
    from gateway import hookimpl

    context = None

    @hookimpl
    def gateway_startup(context):
        globals()["context"] = context

    @hookimpl
    def delivery_delivered(delivery):
        context.log("{name}_heard", rcpt=delivery.recipient)

    @hookimpl
    async def delivery_deferred(delivery):
        await asyncio.sleep(0.05)
        context.log("{name}_heard_later", rcpt=delivery.recipient)
"""

RAISES_ON_DELIVERY = """
    from gateway import hookimpl

    @hookimpl
    def delivery_delivered(delivery):
        raise RuntimeError("notification bug")
"""


def test_outcome_notifications_reach_plain_and_async_plugins_past_a_failing_one(
    tmp_path: Path, plugin_gateway: GatewayFactory
) -> None:
    plugins = {
        "a_buggy": RAISES_ON_DELIVERY,
        "b_hears": HEARS_DELIVERIES.replace("{name}", "b"),
        "c_hears": HEARS_DELIVERIES.replace("{name}", "c"),
    }
    gw = plugin_gateway(
        list(plugins),
        env=install(tmp_path, plugins),
        rcpt_policy=lambda rcpt, _: "451 4.3.0 try later" if rcpt.startswith("bob@") else None,
    )
    result = gw.send("app@shop.test", ["ann@example.test"])
    gw.wait_event("delivered", qid=result.qid)
    error = gw.wait_event("plugin_error", plugin="a_buggy")
    assert (error["hook"], error["kind"]) == ("delivery_delivered", "error")
    gw.wait_event("b_heard", rcpt="ann@example.test")
    gw.wait_event("c_heard", rcpt="ann@example.test")
    deferred = gw.send("app@shop.test", ["bob@example.test"])
    gw.wait_event("deferred", qid=deferred.qid)
    gw.wait_event("b_heard_later", rcpt="bob@example.test")
    gw.wait_event("c_heard_later", rcpt="bob@example.test")


def test_a_slow_plugin_times_out_with_a_4xx(tmp_path: Path, plugin_gateway: GatewayFactory) -> None:
    env = install(tmp_path, {"slow": SLOW})
    gw = plugin_gateway(["slow"], config={"plugins": {"timeouts": {"slow": 0.3}}}, env=env)
    result = gw.send("app@shop.test", ["ann@example.test"])
    assert result.refused == {
        "ann@example.test": "451 4.3.0 Policy check timed out; try again later"
    }
    assert gw.wait_event("plugin_error", plugin="slow")["kind"] == "timeout"


def test_order_decides_which_plugin_answers_first_and_tracing_shows_calls(
    tmp_path: Path, plugin_gateway: GatewayFactory
) -> None:
    env = install(tmp_path, {"says_a": SAYS_A, "says_b": SAYS_B})
    env["GATEWAY_TRACE_HOOKS"] = "1"
    gw = plugin_gateway(["says_a", "says_b"], config={"plugins": {"order": ["says_b"]}}, env=env)
    result = gw.send("app@shop.test", ["ann@example.test"])
    assert result.refused == {"ann@example.test": "550 5.7.1 said by b"}
    traced = gw.wait_event("hook_call", hook="smtp_rcpt_to")
    assert traced["plugin"] == "says_b"
    assert traced["result"].startswith("Decision(action='reject'")


def check_config(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(path)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_plugin_settings_and_names_are_checked(tmp_path: Path) -> None:
    conf = tmp_path / "g.toml"
    conf.write_text('[plugin.suppression]\nexpire = {complaint = "soon"}\n')
    out = check_config(conf)
    assert out.returncode == 2
    assert "plugin.suppression.expire.complaint" in out.stderr
    conf.write_text('[plugins]\nenabled = ["nonesuch"]\n')
    out = check_config(conf)
    assert out.returncode == 2
    assert "not installed: nonesuch" in out.stderr
    conf.write_text('[plugins]\ndisabled = ["consent"]\n[plugin.consent]\nmax_age = 1\n')
    assert "no such plugin is enabled" in check_config(conf).stderr
    conf.write_text("[plugins]\n")
    ok = check_config(conf)
    assert ok.returncode == 0, ok.stderr
    assert "bounce_classes, compliance, consent, rotation, suppression, unsubscribe, warmup" in (
        ok.stdout
    )


DOCS = Path(__file__).parent.parent / "docs" / "plugins.md"


def test_the_docs_describe_every_hook_and_their_worked_example_runs(
    tmp_path: Path, plugin_gateway: GatewayFactory
) -> None:
    doc = DOCS.read_text()
    assert [h for h in hook_names() if f"`{h}(" not in doc] == []
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    example, example_test = blocks[0], blocks[1]
    assert len(example.strip().splitlines()) <= 30
    env = install(tmp_path, {"role_guard": example}, attr="plugin")
    namespace: dict[str, object] = {}
    exec(example_test, namespace)
    test = namespace["test_role_guard_refuses_abuse"]
    assert callable(test)
    test(lambda plugins, **kw: plugin_gateway(plugins, env=env, **kw))


GATEKEEPER = """
    from gateway import Decision, hookimpl

    @hookimpl
    def smtp_connect(session):
        if session.client_ip == "127.0.0.66":
            return Decision.reject("No service for you", code=554, status="5.7.1")

    @hookimpl
    def smtp_mail_from(envelope):
        if envelope.sender.startswith("spammer@"):
            return Decision.reject("Sender refused by policy", code=550, status="5.7.1")
"""


def test_connect_and_mail_from_decisions(tmp_path: Path, plugin_gateway: GatewayFactory) -> None:
    gw = plugin_gateway(["gatekeeper"], env=install(tmp_path, {"gatekeeper": GATEKEEPER}))
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        smtplib.SMTP("127.0.0.1", gw.port, source_address=("127.0.0.66", 0), timeout=10)
    assert refused.value.smtp_code == 554
    assert b"5.7.1 No service for you" in refused.value.smtp_error
    result = gw.send("spammer@shop.test", ["ann@example.test"])
    assert result.refused == {"ann@example.test": "550 5.7.1 Sender refused by policy"}
    assert gw.send("app@shop.test", ["ann@example.test"]).qid


DIRECTORY_AUTH = """
    from gateway import Login, hookimpl

    @hookimpl
    def smtp_auth(session, username, password):
        if username == "app" and password == "from-the-directory" and session.tls:
            return Login("app", tenant="acme", stream="transactional")
        return None
"""


def test_a_plugin_checks_smtp_logins(tmp_path: Path, plugin_gateway: GatewayFactory) -> None:
    """smtp_auth: a user directory as a plugin (no users file); its Login's
    tenant and stream are the message's."""
    cert = issue(tmp_path / "tls", ["gateway.test"])
    env = install(tmp_path, {"directory_auth": DIRECTORY_AUTH})
    gw = plugin_gateway(
        ["directory_auth"],
        env=env,
        config={
            "smtp": {
                "relay_networks": ["127.0.0.1/32"],
                "tls": {"certificate": str(cert.cert), "key": str(cert.key)},
            }
        },
    )
    with smtplib.SMTP("127.0.0.1", gw.port, source_address=("127.0.0.9", 0)) as client:
        client.starttls(context=client_tls())
        client.ehlo()
        client.user, client.password = "app", "wrong"
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.auth("PLAIN", client.auth_plain)
        client.user, client.password = "app", "from-the-directory"
        assert client.auth("PLAIN", client.auth_plain)[0] == 235
        client.sendmail("app@shop.test", ["ann@example.test"], b"From: app@shop.test\r\n\r\nhi\r\n")
    gw.mx.wait_for(1)
    received = gw.process.wait_event("received", client="127.0.0.9")
    assert (received["tenant"], received["stream"]) == ("acme", "transactional")
