"""Delivery status notifications (RFC 3464) to the envelope sender.

Sent for permanent failures and expiry; never for the null sender, and a DSN
itself has the null sender, so a DSN that fails is never answered (no loops).
"""

from __future__ import annotations

import email.utils
import secrets
from dataclasses import dataclass

from gateway.spool import Envelope

MAX_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True)
class Failure:
    recipient: str
    status: str  # enhanced status, e.g. "5.1.1" or "4.4.7"
    diagnostic: str  # the remote reply or our reason, one line
    remote_mta: str = ""  # MX host name, when one answered
    last_attempt: float = 0.0


def original_headers(message: bytes) -> bytes:
    """The header section of a message (bounded), ending in CRLF."""
    end = message.find(b"\r\n\r\n")
    head = message[: end + 2] if end >= 0 else message
    return head[:MAX_HEADER_BYTES]


def build_dsn(
    envelope: Envelope,
    message: bytes,
    failures: list[Failure],
    *,
    reporting_mta: str,
    now: float,
) -> bytes:
    """The complete DSN message, CRLF line endings."""
    boundary = f"=_dsn_{secrets.token_hex(12)}"
    expired = any(f.status.startswith("4") for f in failures)
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: <{envelope.sender}>",
        "Subject: " + ("Delivery expired" if expired else "Undelivered Mail Returned to Sender"),
        f"Date: {email.utils.formatdate(now)}",
        f"Message-ID: <{envelope.qid}.dsn.{secrets.token_hex(4)}@{reporting_mta}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "",
        f"This is the mail system at {reporting_mta}.",
        "",
        "Your message could not be delivered to one or more recipients."
        + (" It stayed in the queue too long." if expired else ""),
        "",
    ]
    for f in failures:
        lines.append(f"<{f.recipient}>: {f.diagnostic}")
    lines += [
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
        f"Reporting-MTA: dns; {reporting_mta}",
        f"X-Gateway-Queue-ID: {envelope.qid}",
        f"Arrival-Date: {email.utils.formatdate(envelope.received_at)}",
    ]
    for f in failures:
        lines += [
            "",
            f"Final-Recipient: rfc822; {f.recipient}",
            "Action: failed",
            f"Status: {f.status}",
        ]
        if f.remote_mta:
            lines.append(f"Remote-MTA: dns; {f.remote_mta}")
        lines.append(f"Diagnostic-Code: smtp; {f.diagnostic}")
        if f.last_attempt:
            lines.append(f"Last-Attempt-Date: {email.utils.formatdate(f.last_attempt)}")
    lines += [
        "",
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        "",
    ]
    head = "\r\n".join(lines).encode("utf-8") + b"\r\n"
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head + original_headers(message).rstrip(b"\r\n") + b"\r\n" + tail
