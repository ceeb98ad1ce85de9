"""Report parsing and feedback tokens without a network."""

from __future__ import annotations

from gateway.feedback import reports as parse
from gateway.feedback.tokens import (
    message_id_token,
    read_message_id_token,
    read_verp,
    verp_address,
)
from tests import reports

ORIGINAL = (
    b"X-Gateway-Id: 06H0TEST00000001.abcdefghij\r\nFrom: app@sender.test\r\n"
    b"To: ann@good.test\r\nSubject: hi\r\n\r\nhello\r\n"
)


def test_verp_and_id_tokens_round_trip_and_refuse_forgery() -> None:
    secret = b"k" * 20
    address = verp_address(secret, "06H0TEST00000001", 3, "bounces.sender.test")
    assert address.startswith("b+")
    assert read_verp(secret, address) == ("06H0TEST00000001", 3)
    assert read_verp(secret, f"<{address.upper()}>") == ("06H0TEST00000001", 3)
    assert read_verp(b"other secret", address) is None
    local, _, domain = address.partition("@")
    tampered = local[:-1] + ("a" if local[-1] != "a" else "b") + "@" + domain
    assert read_verp(secret, tampered) is None
    assert read_verp(secret, "ann@good.test") is None
    token = message_id_token(secret, "06H0TEST00000001")
    assert read_message_id_token(secret, token) == "06H0TEST00000001"
    assert read_message_id_token(secret, "06H0TEST00000002" + token[16:]) is None


def test_every_bounce_format_names_recipient_status_and_reply() -> None:
    cases = {
        "rfc3464": reports.rfc3464(ORIGINAL, "ann@good.test", status="5.2.2"),
        "qmail": reports.qmail(ORIGINAL, "ann@good.test"),
        "exim": reports.exim(ORIGINAL, "ann@good.test"),
    }
    for fmt, raw in cases.items():
        report = parse.parse_bounce(raw)
        assert report is not None, fmt
        assert report.format == fmt
        (rcpt,) = report.recipients
        assert rcpt.recipient == "ann@good.test", fmt
        assert rcpt.status in ("5.1.1", "5.2.2"), fmt
        assert rcpt.diagnostic, fmt
    rfc = parse.parse_bounce(cases["rfc3464"])
    assert rfc is not None
    assert rfc.original is not None
    assert rfc.original["X-Gateway-Id"] == "06H0TEST00000001.abcdefghij"
    text = parse.parse_bounce(reports.plain("ann@good.test"))
    assert text is not None
    assert (text.format, text.recipients[0].recipient, text.recipients[0].status) == (
        "text",
        "",
        "5.1.1",
    )


def test_delayed_dsns_arf_fields_and_things_that_are_not_reports() -> None:
    delayed = reports.rfc3464(ORIGINAL, "ann@good.test", status="4.4.7").replace(
        b"Action: failed", b"Action: delayed"
    )
    report = parse.parse_bounce(delayed)
    assert report is not None
    assert report.recipients[0].action == "delayed"
    complaint = parse.parse_complaint(reports.arf(ORIGINAL, "ann@good.test", "app@sender.test"))
    assert complaint is not None
    assert (complaint.feedback_type, complaint.recipient, complaint.source_ip) == (
        "abuse",
        "ann@good.test",
        "127.0.0.1",
    )
    assert complaint.original_mail_from == "app@sender.test"
    assert parse.parse_complaint(ORIGINAL) is None
    assert parse.parse_bounce(b"Subject: hello\r\n\r\njust a letter\r\n") is None
