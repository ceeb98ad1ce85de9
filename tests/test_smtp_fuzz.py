"""A short run of the SMTP session fuzzer (tests/smtp_fuzz.py) against a live
gateway, replaying the regression corpus first; long runs are by hand."""

from __future__ import annotations

from pathlib import Path

from gateway.testing import DnsServer, GatewayProcess
from tests.smtp_fuzz import fuzz, fuzz_config, session_errors


def test_random_sessions_get_well_formed_replies_and_no_internal_error(
    tmp_path: Path, dns_server: DnsServer
) -> None:
    with GatewayProcess(tmp_path / "gw", fuzz_config(dns_server)) as gw:
        ran = fuzz(gw.port, examples=150, seconds=45)
        assert ran >= 50
        assert session_errors(gw) == []
