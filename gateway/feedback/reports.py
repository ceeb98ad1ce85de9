"""Reading bounces and complaints.

Bounces: RFC 3464 delivery status notifications (multipart/report with a
message/delivery-status part, also RFC 6533's message/global-delivery-status),
and the common formats that are not: qmail's ("Hi. This is the qmail-send
program ..."), Exim's ("The following address(es) failed"), and, as a last
resort, any text with an enhanced status code in it. Complaints: ARF reports
(RFC 5965, multipart/report; report-type=feedback-report).

Python's `email` package parses them: reports are small and rare, and it is
the most forgiving MIME parser at hand for the odd things remote MTAs send.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import re
from dataclasses import dataclass, field

_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_QMAIL = re.compile(r"^<([^>\s]+@[^>\s]+)>:\s*\n(.*?)(?=\n\s*\n|\n<|\Z)", re.M | re.S)
_EXIM = re.compile(r"following address\(es\) failed:\s*\n(.*?)(?:\n-{3,}|\Z)", re.S | re.IGNORECASE)


@dataclass
class RecipientStatus:
    recipient: str
    status: str  # enhanced status code, "" if none found
    diagnostic: str  # the remote server's reply, as reported
    action: str = "failed"  # RFC 3464 Action: failed, delayed, delivered, relayed, expanded


@dataclass
class BounceReport:
    recipients: list[RecipientStatus]
    original: email.message.Message | None  # the returned message or its headers
    format: str  # rfc3464, qmail, exim, text


@dataclass
class ComplaintReport:
    feedback_type: str  # abuse, fraud, virus, other, not-spam, ...
    recipient: str  # Original-Rcpt-To, or the original's To when not redacted
    source_ip: str
    original_mail_from: str
    original: email.message.Message | None
    user_agent: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def _decoded(part: email.message.Message) -> bytes:
    """A leaf part's body, transfer-decoded."""
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def _blocks(part: email.message.Message) -> list[email.message.Message]:
    """The field blocks of a message/delivery-status or message/feedback-report
    part, however the parser took it (sub-messages, or text)."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, email.message.Message)]
    text = _decoded(part)
    return [
        email.message_from_bytes(block.strip() + b"\n")
        for block in re.split(rb"\r?\n\s*\r?\n", text)
        if block.strip()
    ]


def _value(block: email.message.Message, name: str) -> str:
    value = block.get(name)
    return " ".join(str(value).split()) if value else ""


def _typed(value: str) -> str:
    """'rfc822; ann@example.com' -> 'ann@example.com'."""
    return value.partition(";")[2].strip() if ";" in value else value.strip()


def _original(message: email.message.Message) -> email.message.Message | None:
    for part in message.walk():
        kind = part.get_content_type()
        if kind in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            if isinstance(payload, list) and payload:
                first = payload[0]
                return first if isinstance(first, email.message.Message) else None
        if kind in ("text/rfc822-headers", "message/global-headers"):
            return email.message_from_bytes(_decoded(part))
    return None


def _text(message: email.message.Message) -> str:
    """The human-readable text of a message (its first text/plain, or all of it)."""
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            return _decoded(part).decode(part.get_content_charset() or "utf-8", "replace")
    raw = _decoded(message) if not message.is_multipart() else b""
    return raw.decode("utf-8", "replace")


def _status_in(text: str) -> str:
    found = _STATUS.search(text)
    return ".".join(found.groups()) if found else ""


def _rfc3464(message: email.message.Message) -> list[RecipientStatus] | None:
    for part in message.walk():
        if part.get_content_type() in ("message/delivery-status", "message/global-delivery-status"):
            blocks = _blocks(part)
            found = []
            for block in blocks:
                recipient = _typed(_value(block, "Final-Recipient")) or _typed(
                    _value(block, "Original-Recipient")
                )
                if not recipient:
                    continue  # the per-message block
                diagnostic = _typed(_value(block, "Diagnostic-Code"))
                status = _value(block, "Status") or _status_in(diagnostic)
                action = _value(block, "Action").lower() or "failed"
                found.append(RecipientStatus(recipient, status, diagnostic, action))
            return found
    return None


def _qmail(text: str) -> list[RecipientStatus] | None:
    if "qmail-send" not in text and "This is the qmail" not in text:
        return None
    body = text.split("--- Below this line", 1)[0]
    return [
        RecipientStatus(addr, _status_in(reason), " ".join(reason.split()))
        for addr, reason in _QMAIL.findall(body)
    ] or None


def _exim(text: str) -> list[RecipientStatus] | None:
    found = _EXIM.search(text)
    if not found:
        return None
    statuses = []
    current: list[str] = []
    for line in [*found.group(1).splitlines(), ""]:
        if line.startswith("  ") and not line.startswith("   ") and "@" in line:
            if current:
                statuses.append(current)
            current = [line.strip()]
        elif current and line.strip():
            current.append(line.strip())
    if current:
        statuses.append(current)
    return [
        RecipientStatus(lines[0].strip("<>"), _status_in(" ".join(lines)), " ".join(lines[1:]))
        for lines in statuses
    ] or None


def parse_bounce(raw: bytes) -> BounceReport | None:
    """The recipients a bounce reports on, or None if it does not look like one."""
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    original = _original(message)
    recipients = _rfc3464(message)
    if recipients is not None:
        return BounceReport(recipients, original, "rfc3464")
    text = _text(message)
    for name, parse in (("qmail", _qmail), ("exim", _exim)):
        found = parse(text)
        if found:
            return BounceReport(found, original, name)
    status = _status_in(text)
    if status:  # an unknown format: the recipient must come from VERP
        reply = next((line.strip() for line in text.splitlines() if status in line), status)
        return BounceReport([RecipientStatus("", status, reply)], original, "text")
    return None


def parse_complaint(raw: bytes) -> ComplaintReport | None:
    """An ARF report's fields, or None if `raw` is not one."""
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    for part in message.walk():
        if part.get_content_type() != "message/feedback-report":
            continue
        fields: dict[str, str] = {}
        for block in _blocks(part):
            for name in block:
                fields.setdefault(name.lower(), _value(block, name))
        original = _original(message)
        recipient = fields.get("original-rcpt-to", "")
        if not recipient and original is not None:
            to = _ADDRESS.findall(str(original.get("To", "")))
            recipient = to[0] if len(to) == 1 else ""
        return ComplaintReport(
            feedback_type=fields.get("feedback-type", "other").lower(),
            recipient=recipient.strip("<> "),
            source_ip=fields.get("source-ip", ""),
            original_mail_from=fields.get("original-mail-from", "").strip("<> "),
            original=original,
            user_agent=fields.get("user-agent", ""),
            extra=fields,
        )
    return None
