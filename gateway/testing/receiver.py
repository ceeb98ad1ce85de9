"""Real SMTP servers that play a recipient's MX in tests (aiosmtpd, own thread)."""

from __future__ import annotations

import asyncio
import socketserver
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from gateway.testing.service import Service

RcptPolicy = Callable[[str, int], str | None]
"""(recipient, how many times it was offered so far) -> reply, or None to accept."""


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    peer: str
    client_port: int = 0
    tls: bool = False
    esmtp_params: tuple[str, ...] = ()
    helo: str = ""
    at: float = 0.0  # time.time() when the 250 to DATA was decided


class _Handler:
    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self.receiver.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        r = self.receiver
        with r.lock:
            r.offered[address] += 1
            count = r.offered[address]
        reply = r.rcpt_policy(address, count) if r.rcpt_policy else None
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        r = self.receiver
        if r.data_delay:
            await asyncio.sleep(r.data_delay)
        reply = r.data_policy(envelope) if r.data_policy else None
        if reply:
            return reply
        with r.lock:
            r.messages.append(
                Received(
                    "" if envelope.mail_from in (None, "<>") else envelope.mail_from,
                    list(envelope.rcpt_tos),
                    bytes(envelope.original_content or b""),
                    str(session.peer[0]),
                    int(session.peer[1]),
                    session.ssl is not None,
                    tuple(envelope.mail_options),
                    str(session.host_name or ""),
                    time.time(),
                )
            )
        return "250 2.0.0 OK accepted"


class _CountingSMTP(SMTP):
    """Counts open connections, so tests can check connection limits."""

    def __init__(self, receiver: Receiver, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._receiver = receiver

    def connection_made(self, transport: Any) -> None:
        r = self._receiver
        with r.lock:
            r.open_connections += 1
            r.most_open_connections = max(r.most_open_connections, r.open_connections)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        with self._receiver.lock:
            self._receiver.open_connections -= 1
        super().connection_lost(error)


class _CountingController(Controller):
    def __init__(self, receiver: Receiver, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._receiver = receiver

    def factory(self) -> SMTP:
        return _CountingSMTP(self._receiver, self.handler, **self.SMTP_kwargs)


class Receiver(Service):
    """An SMTP server on ip:port that records every message it accepts."""

    def __init__(
        self,
        ip: str,
        port: int,
        *,
        rcpt_policy: RcptPolicy | None = None,
        data_policy: Callable[[Any], str | None] | None = None,
        pipelining: bool = True,
        tls_context: ssl.SSLContext | None = None,
        data_delay: float = 0.0,
    ) -> None:
        self.ip = ip
        self.port = port
        self.rcpt_policy = rcpt_policy
        self.data_policy = data_policy
        self.pipelining = pipelining
        self.lock = threading.Lock()
        self.messages: list[Received] = []
        self.offered: Counter[str] = Counter()
        self.data_delay = data_delay  # seconds before answering DATA: keeps connections busy
        self.open_connections = 0
        self.most_open_connections = 0
        self._controller = _CountingController(
            self,
            _Handler(self),
            hostname=ip,
            port=port,
            enable_SMTPUTF8=True,
            ready_timeout=10,
            tls_context=tls_context,
        )

    def start(self) -> Receiver:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def received_by(self, rcpt: str) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if rcpt in m.rcpt_tos]

    def wait_for(self, count: int, timeout: float = 15.0) -> list[Received]:
        """At least `count` messages, or TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.ip} got {len(self.messages)} of {count} messages")
            time.sleep(0.05)


class RefusingServer(Service):
    """A server that answers every connection with one reply and hangs up
    (e.g. a 554 greeting: "no SMTP service here")."""

    def __init__(self, ip: str, port: int, reply: str = "554 5.3.2 No service") -> None:
        self.connections = 0
        line = reply.encode() + b"\r\n"
        outer = self

        class _Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer.connections += 1
                self.request.sendall(line)

        class _Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self._server = _Server((ip, port), _Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> RefusingServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
