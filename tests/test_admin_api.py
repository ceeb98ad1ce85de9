"""The admin listener: bearer-token auth, and the API's contract over a real server."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from gateway.admin import add_routes
from gateway.app import Gateway
from gateway.config import Config
from gateway.openapi import PATHS
from gateway.testing import GatewayProcess
from gateway.testing.process import admin_request


def test_the_admin_api_needs_the_token_and_metrics_do_not(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    with GatewayProcess(tmp_path, base_config) as gw:
        port = gw.admin_port
        assert admin_request(port, "", "GET", "/admin/holds")[0] == 401
        status, answer = admin_request(port, "wrong-token", "GET", "/admin/holds")
        assert status == 401
        assert "Authorization: Bearer" in answer["error"]
        assert admin_request(port, gw.admin_token, "GET", "/admin/holds") == (200, [])
        status, text = admin_request(port, "", "GET", "/metrics")
        assert status == 200
        assert "gateway_" in text


def test_without_a_configured_token_one_is_made_and_kept_private(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    config = {**base_config, "admin": {"token": ""}}
    with GatewayProcess(tmp_path, config) as gw:
        token_file = tmp_path / "data" / "admin.token"
        token = token_file.read_text().strip()
        assert len(token) >= 32
        assert token_file.stat().st_mode & 0o077 == 0
        assert admin_request(gw.admin_port, token, "GET", "/admin/holds") == (200, [])


def test_every_metric_is_documented() -> None:
    import re

    from gateway import metrics, state_metrics

    doc = (Path(__file__).parent.parent / "docs" / "metrics.md").read_text()
    source = Path(metrics.__file__).read_text() + Path(state_metrics.__file__).read_text()
    names = set(re.findall(r'"(gateway_[a-z_]+)"', source))
    assert len(names) > 20
    assert sorted(n for n in names if f"`{n}`" not in doc) == []


def test_http_injection_queues_signs_and_applies_recipient_policy(
    tmp_path: Path, base_config: dict[str, Any], mx_port: int
) -> None:
    from gateway.testing import Receiver
    from tests.zones import MX

    config = {**base_config, "plugins": {"enabled": ["suppression"]}}
    with Receiver(MX["good1"], mx_port) as mx, GatewayProcess(tmp_path, config) as gw:
        gw.admin("POST", "/suppression", {"address": "gone@good.test"})
        raw = b"From: app@sender.test\nTo: ann@good.test\nSubject: via HTTP\n\nhello\n"
        status, answer = gw.admin(
            "POST",
            "/admin/messages?sender=app@sender.test&rcpt=ann@good.test&rcpt=gone@good.test",
            raw,
        )
        assert status == 200, answer
        assert answer["refused"] == {
            "gone@good.test": "550 5.7.1 Recipient is on a suppression list (manual)"
        }
        gw.wait_event("delivered", qid=answer["qid"])
        (got,) = mx.wait_for(1)
        assert got.rcpt_tos == ["ann@good.test"]
        assert b"with HTTP id " + answer["qid"].encode() in got.content
        assert b"Subject: via HTTP\r\n" in got.content  # line endings made CRLF
        assert gw.admin("POST", "/admin/messages?sender=a@b.test", raw)[0] == 400
        assert (
            admin_request(gw.admin_port, "", "POST", "/admin/messages?rcpt=a@b.test", raw)[0] == 401
        )


def test_the_openapi_description_covers_exactly_the_routes(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    config = {**base_config, "plugins": {"enabled": ["suppression", "consent"]}}
    with GatewayProcess(tmp_path, config) as gw:
        status, spec = gw.admin("GET", "/admin/openapi.json")
    assert status == 200
    assert spec["openapi"] == "3.1.0"
    described = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}
    assert spec["paths"] == json.loads(json.dumps(PATHS))
    # The routes the admin listener really has (read from a gateway in this process).
    assert described == served_routes(config, tmp_path / "probe")


def served_routes(config: dict[str, Any], workdir: Path) -> set[tuple[str, str]]:
    """The (path, method) pairs a gateway with this config serves on the admin
    listener, read from its router (built in this process, not started)."""
    cfg = Config.model_validate({**config, "node": {"data_dir": str(workdir)}})
    gw = Gateway(cfg)
    gw.admin.add("GET", "/metrics", gw._metrics)
    add_routes(gw.admin, gw.engine, gw.keeper, gw.handler)
    contexts = {name: gw._context(name) for name in gw.plugins.names}
    asyncio.run(gw.plugins.startup(contexts))
    gw.store.close()
    return {
        (resource.canonical, route.method)
        for resource in gw.admin.app.router.resources()
        for route in resource
        if route.method != "HEAD"
    }


def test_a_timed_suspension_survives_a_restart_and_ends_on_time(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    """A suspension for N seconds is kept in the policy store with its end:
    after a restart it is back with the same end, and once that passes it is
    gone (the store's record expires with it)."""
    scope = {"site": "nowhere.test"}
    gw = GatewayProcess(tmp_path, base_config)
    with gw.start():
        status, _ = gw.admin("POST", "/admin/suspend", {"scope": scope, "seconds": 4})
        assert status == 200
        _, holds = gw.admin("GET", "/admin/holds")
        until = holds[0]["until"]
        time.sleep(0.5)  # its write reaches the store
        assert gw.stop() == 0
        gw.start()
        gw.wait_event("started", holds_restored=1)
        _, holds = gw.admin("GET", "/admin/holds")
        assert [(h["scope"], h["until"]) for h in holds] == [(scope, until)]
        time.sleep(max(0.0, until - time.time()) + 1.5)
        assert gw.admin("GET", "/admin/holds")[1] == []
        assert gw.stop() == 0
        gw.start()
        gw.wait_event("started", holds_restored=0)
