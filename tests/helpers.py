"""Small helpers for tests: send a message the way a client MTA would."""

from __future__ import annotations

import email
import email.message
import smtplib

from gateway.ingress import QUEUED_AS


def make_message(subject: str = "test", body: str = "hello\r\n", sender: str = "") -> bytes:
    lines = [
        f"From: {sender or 'app@sender.test'}",
        "To: someone",
        f"Subject: {subject}",
        "Message-ID: <" + subject.replace(" ", ".") + "@sender.test>",
        "",
        body,
    ]
    return "\r\n".join(lines).encode()


def send(
    port: int,
    sender: str,
    recipients: list[str],
    data: bytes | None = None,
    source: str | None = None,
) -> str:
    """Send one message; returns the queue ID from the 250 reply."""
    with smtplib.SMTP(
        "127.0.0.1", port, timeout=30, source_address=(source, 0) if source else None
    ) as client:
        client.ehlo("client.test")
        code, reply = client.mail(sender)
        assert code == 250, reply
        for rcpt in recipients:
            code, reply = client.rcpt(rcpt)
            assert code == 250, (rcpt, code, reply)
        code, reply = client.data(data or make_message())
        assert code == 250, reply
        match = QUEUED_AS.search(reply.decode())
        assert match, reply
        return match.group(1)


def parse(content: bytes) -> email.message.Message:
    return email.message_from_bytes(content)


def dsn_fields(dsn: email.message.Message) -> tuple[dict[str, str], list[dict[str, str]]]:
    """(per-message fields, per-recipient fields) of a multipart/report DSN."""
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    status = part(dsn, "message/delivery-status")
    blocks = status.get_payload()
    assert isinstance(blocks, list)
    fields = [dict(b.items()) for b in blocks if isinstance(b, email.message.Message)]
    return fields[0], fields[1:]


def part(message: email.message.Message, content_type: str) -> email.message.Message:
    """The first direct subpart of a multipart message with this content type."""
    parts = message.get_payload()
    assert isinstance(parts, list)
    found = [p for p in parts if isinstance(p, email.message.Message)]
    return next(p for p in found if p.get_content_type() == content_type)
