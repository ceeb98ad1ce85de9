"""Send a message the way a client MTA would, and report every reply."""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass, field

from gateway.ingress import QUEUED_AS


@dataclass
class SendResult:
    """What the gateway answered: the queue ID (None if DATA was refused or never
    sent), the refused recipients with their replies, and the DATA reply."""

    qid: str | None
    refused: dict[str, str] = field(default_factory=dict)
    data_reply: str = ""


def send_message(
    port: int,
    sender: str,
    recipients: list[str],
    data: bytes,
    host: str = "127.0.0.1",
    source: str | None = None,
) -> SendResult:
    """Send one message; `source` picks the client's local address (127.0.0.x)."""
    with smtplib.SMTP(
        host, port, timeout=30, source_address=(source, 0) if source else None
    ) as client:
        client.ehlo("client.test")
        code, reply = client.mail(sender)
        if code != 250:
            return SendResult(None, {r: f"{code} {reply.decode()}" for r in recipients})
        refused = {}
        for rcpt in recipients:
            code, reply = client.rcpt(rcpt)
            if code not in (250, 251):
                refused[rcpt] = f"{code} {reply.decode()}"
        if len(refused) == len(recipients):
            return SendResult(None, refused)
        code, reply = client.data(data)
        text = f"{code} {reply.decode()}"
        found = QUEUED_AS.search(text) if code == 250 else None
        return SendResult(found.group(1) if found else None, refused, text)


def client_tls() -> ssl.SSLContext:
    """A client TLS context that accepts the tests' self-signed certificates."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the test certificate is self-signed
    return context


def served_certificate(port: int) -> bytes:
    """The DER certificate the SMTP server on 127.0.0.1:port offers at STARTTLS."""
    with smtplib.SMTP("127.0.0.1", port) as client:
        client.starttls(context=client_tls())
        assert isinstance(client.sock, ssl.SSLSocket)
        der = client.sock.getpeercert(binary_form=True)
    assert der is not None
    return der
