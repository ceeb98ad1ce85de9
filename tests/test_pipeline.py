"""The message pipeline in process: what it counts, and the key choice rules."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Literal

from prometheus_client import REGISTRY

from gateway.config import Config, DkimConfig, DkimKeyConfig
from gateway.dkim import KeyStore
from gateway.pipeline import MessagePipeline, Prepared
from gateway.testing.dkim import write_key


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def pipeline(
    tmp_path: Path, on_failure: Literal["relay", "defer", "reject"] = "relay"
) -> MessagePipeline:
    key = write_key(tmp_path / "k.pem", "ed25519")
    keys = [DkimKeyConfig(domain="brand.test", selector="s1", key_file=key)]
    config = Config.model_validate(
        {"dkim": DkimConfig(keys=keys, on_failure=on_failure).model_dump()}
    )
    return MessagePipeline(config, KeyStore(config.dkim))


def run(p: MessagePipeline, raw: bytes) -> Prepared:
    try:
        return asyncio.run(p.process(raw, qid="Q1", smtputf8=False))
    finally:
        p.close()


def test_signing_and_lint_are_counted(tmp_path: Path) -> None:
    signed = sample("gateway_dkim_signatures_total", algorithm="ed25519-sha256")
    fixed = sample("gateway_message_lint_findings_total", code="missing-date", fixed="yes")
    result = run(pipeline(tmp_path), b"From: a@news.brand.test\r\nSubject: x\r\n\r\nhi\r\n")
    assert result.reply is None
    assert result.signed_by == ["d=brand.test s=s1"]
    assert result.data.startswith(b"DKIM-Signature: v=1; a=ed25519-sha256; s=s1; d=brand.test;")
    assert sample("gateway_dkim_signatures_total", algorithm="ed25519-sha256") == signed + 1
    assert (
        sample("gateway_message_lint_findings_total", code="missing-date", fixed="yes") == fixed + 1
    )


def test_unsigned_and_rejected_are_counted(tmp_path: Path) -> None:
    unsigned = sample("gateway_dkim_unsigned_total", reason="no_key", action="reject")
    rejected = sample("gateway_messages_rejected_total", reason="dkim")
    result = run(pipeline(tmp_path, on_failure="reject"), b"From: a@other.test\r\n\r\nhi\r\n")
    assert result.reply is not None
    assert result.reply.startswith("550 5.7.5")
    assert result.unsigned_reason == "no_key"
    assert sample("gateway_dkim_unsigned_total", reason="no_key", action="reject") == unsigned + 1
    assert sample("gateway_messages_rejected_total", reason="dkim") == rejected + 1


def test_wildcard_map_and_bare_tld_never_match(tmp_path: Path) -> None:
    key = write_key(tmp_path / "k.pem", "ed25519")
    keys = [
        DkimKeyConfig(domain="test", selector="s", key_file=key),
        DkimKeyConfig(domain="esp.test", selector="s", key_file=key),
    ]
    store = KeyStore(DkimConfig(keys=keys, domain_map={"*": "esp.test"}))
    assert [s.domain for s in store.signers_for(["shop.test"])] == ["esp.test"]
    assert [s.domain for s in store.signers_for([])] == ["esp.test"]
