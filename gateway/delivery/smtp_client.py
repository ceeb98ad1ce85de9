"""Outbound SMTP client over asyncio streams.

Why not aiosmtplib: its protocol drops replies that arrive while no command is
awaiting one, so it cannot pipeline (RFC 2920), and it has one timeout for all
commands. Delivery needs a reply per recipient from one pipelined MAIL/RCPT
batch and the per-stage timeouts of RFC 5321 §4.5.3.2, so the client is ours
and small; dot-stuffing runs in Rust (`_core.dot_stuff`).
"""

from __future__ import annotations

import asyncio
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

from gateway import _core
from gateway.config import DeliveryTimeouts

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")
MAX_REPLY_LINE = 4096
MAX_REPLY_LINES = 100


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        """All lines on one line, for logs and DSNs."""
        return " / ".join(self.lines)

    @property
    def enhanced(self) -> str | None:
        m = _ENHANCED.match(self.text)
        return m.group(0) if m else None

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


class SmtpError(Exception):
    """The session failed: connection trouble, timeout or a protocol violation."""

    def __init__(self, message: str, reply: Reply | None = None, status: str = "") -> None:
        super().__init__(message)
        self.reply = reply
        self.status = status  # enhanced status code for the deferral, when it is not 4.4.x


@dataclass
class SendResult:
    """Per-recipient replies (same order as given; a refused MAIL stands for every
    recipient) and the final DATA reply, None when DATA was never sent."""

    rcpts: list[Reply]
    data: Reply | None


def verifying_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """TLS that checks the peer's certificate and name (MTA-STS, policy hosts):
    against `ca_file`, else the system's CAs."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _tls_context() -> ssl.SSLContext:
    # Opportunistic TLS (RFC 7435): encrypt when offered, without
    # authenticating the peer; an MTA-STS policy asks for `verify` instead.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class SmtpConnection:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        timeouts: DeliveryTimeouts,
        peer: str,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._timeouts = timeouts
        self.peer = peer
        self.extensions: dict[str, str] = {}
        self.tls = False
        self.broken = False
        self.source = ""  # name of the egress source it is bound to, if any

    @classmethod
    async def open(
        cls,
        address: str,
        port: int,
        *,
        helo: str,
        timeouts: DeliveryTimeouts,
        starttls: bool = True,
        require_tls: bool = False,
        server_name: str | None = None,
        source_address: str | None = None,
        verify: ssl.SSLContext | None = None,
    ) -> SmtpConnection:
        """Connect, read the greeting, EHLO (HELO fallback), STARTTLS if offered.

        With `require_tls` (a site's `tls = "required"` policy) a server that
        does not offer STARTTLS or whose TLS fails is left before MAIL FROM:
        SmtpError with status 4.7.10 (RFC 3463: encryption needed). With
        `verify` (an MTA-STS policy) the certificate must be valid for
        `server_name`, else SmtpError with status 4.7.5."""
        local = (source_address, 0) if source_address else None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(address, port, local_addr=local, limit=MAX_REPLY_LINE),
                timeouts.connect,
            )
        except (OSError, TimeoutError) as exc:
            raise SmtpError(f"connect to {address}:{port} failed: {exc or 'timeout'}") from None
        conn = cls(reader, writer, timeouts, address)
        try:
            greeting = await conn._read_reply(timeouts.greeting)
            if greeting.code != 220:
                raise SmtpError(f"greeting refused: {greeting}", greeting)
            await conn._hello(helo)
            if starttls and "STARTTLS" in conn.extensions:
                reply = await conn.command("STARTTLS", timeouts.starttls)
                if reply.code == 220:
                    try:
                        await writer.start_tls(
                            verify or _tls_context(),
                            server_hostname=server_name,
                            ssl_handshake_timeout=timeouts.starttls,
                        )
                    except (ssl.SSLError, ssl.CertificateError) as exc:
                        why = "certificate not valid" if verify else "TLS handshake failed"
                        status = "4.7.5" if verify else "4.7.0"
                        raise SmtpError(f"{why}: {exc}", status=status) from None
                    conn.tls = True
                    await conn._hello(helo)
            if require_tls and not conn.tls:
                offered = "STARTTLS" in conn.extensions
                raise SmtpError(
                    "TLS required by policy but "
                    + ("STARTTLS failed" if offered else "the server does not offer STARTTLS"),
                    status="4.7.10",
                )
        except BaseException:
            conn.abort()
            raise
        return conn

    async def _hello(self, helo: str) -> None:
        reply = await self.command(f"EHLO {helo}", self._timeouts.ehlo)
        if reply.ok:
            self.extensions = {}
            for line in reply.lines[1:]:
                keyword, _, params = line.partition(" ")
                self.extensions[keyword.upper()] = params
            return
        reply = await self.command(f"HELO {helo}", self._timeouts.ehlo)
        if not reply.ok:
            raise SmtpError(f"HELO refused: {reply}", reply)
        self.extensions = {}

    async def command(self, line: str, timeout: float) -> Reply:
        self._write(line.encode("utf-8") + b"\r\n")
        return await self._read_reply(timeout)

    def _write(self, data: bytes) -> None:
        if self.broken or self._writer.is_closing():
            raise SmtpError("connection closed")
        self._writer.write(data)

    async def _read_reply(self, timeout: float) -> Reply:
        return (await self._read_replies(1, timeout))[0]

    async def _read_replies(self, count: int, timeout: float) -> list[Reply]:
        """`count` replies within `timeout` seconds in all (a pipelined group's)."""
        try:
            # asyncio.timeout, not wait_for: no task per reply (several per message).
            async with asyncio.timeout(timeout):
                return [await self._read_reply_lines() for _ in range(count)]
        except TimeoutError:
            self.broken = True
            raise SmtpError(f"timeout after {timeout:g}s waiting for {self.peer}") from None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            self.broken = True
            raise SmtpError(f"connection to {self.peer} lost: {exc}") from None

    async def _read_reply_lines(self) -> Reply:
        texts: list[str] = []
        while True:
            raw = await self._reader.readuntil(b"\n")
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in ("", " ", "-"):
                self.broken = True
                raise SmtpError(f"malformed reply from {self.peer}: {line[:100]!r}")
            texts.append(line[4:])
            if line[3:4] != "-":
                return Reply(int(line[:3]), tuple(texts))
            if len(texts) > MAX_REPLY_LINES:
                self.broken = True
                raise SmtpError(f"reply from {self.peer} too long")

    async def send(
        self,
        sender: str,
        recipients: list[str],
        data: bytes,
        *,
        smtputf8: bool = False,
        body_8bit: bool = False,
    ) -> SendResult:
        """One transaction. Pipelines MAIL and RCPTs when the server offers it."""
        t = self._timeouts
        mail = f"MAIL FROM:<{sender}>"
        if body_8bit and "8BITMIME" in self.extensions:
            mail += " BODY=8BITMIME"
        if smtputf8 and "SMTPUTF8" in self.extensions:
            mail += " SMTPUTF8"
        if "SIZE" in self.extensions:
            mail += f" SIZE={len(data)}"
        commands = [mail] + [f"RCPT TO:<{r}>" for r in recipients]
        data_reply: Reply | None = None
        if "PIPELINING" in self.extensions:
            # RFC 2920: DATA may end the group, saving a round trip per message.
            self._write(b"".join(c.encode("utf-8") + b"\r\n" for c in [*commands, "DATA"]))
            # The group's replies come together: they get the longest of their
            # stages' timeouts, one timer rather than one per reply.
            *replies, data_reply = await self._read_replies(
                len(commands) + 1, max(t.mail, t.rcpt, t.data_init)
            )
        else:
            replies = [await self.command(mail, t.mail)]
            if replies[0].ok:
                replies += [await self.command(c, t.rcpt) for c in commands[1:]]
        mail_reply = replies[0]
        accepted = mail_reply.ok and any(r.ok for r in replies[1:])
        if data_reply is not None and data_reply.code == 354 and not accepted:
            # A server that said 354 with no recipient: end the empty message.
            self._write(b".\r\n")
            await self._read_reply(t.data_done)
        if not mail_reply.ok:
            await self.rset()
            return SendResult([mail_reply] * len(recipients), None)
        rcpt_replies = replies[1:]
        if not accepted:
            await self.rset()
            return SendResult(rcpt_replies, None)
        reply = data_reply or await self.command("DATA", t.data_init)
        if reply.code != 354:
            return SendResult(rcpt_replies, reply)
        payload = _core.dot_stuff(data)
        self._write(payload)
        try:
            if self._writer.transport.get_write_buffer_size():  # else no wait, no timer
                async with asyncio.timeout(t.data_block):
                    await self._writer.drain()
        except (TimeoutError, OSError) as exc:
            self.broken = True
            raise SmtpError(f"sending data to {self.peer} failed: {exc or 'timeout'}") from None
        return SendResult(rcpt_replies, await self._read_reply(t.data_done))

    async def rset(self) -> None:
        reply = await self.command("RSET", self._timeouts.mail)
        if not reply.ok:
            self.broken = True

    async def quit(self) -> None:
        try:
            if not self.broken:
                await self.command("QUIT", 10)
        except SmtpError:
            pass
        finally:
            self.abort()

    def abort(self) -> None:
        self.broken = True
        self._writer.close()
