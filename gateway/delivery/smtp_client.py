"""Outbound SMTP client: an asyncio protocol that parses replies as they arrive.

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
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from gateway import _core
from gateway.config import DeliveryTimeouts

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")
MAX_REPLY_LINE = 4096
MAX_REPLY_LINES = 100
# Messages up to this size may have their end held for the next write (`send`).
DEFERRED_END_BYTES = 64 * 1024


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


class _ReplyReader(asyncio.Protocol):
    """The connection's protocol: parses replies as bytes arrive and hands a
    waiting reader the replies it asked for at once, one wakeup per pipelined
    group rather than a stream read per line. Also the writer's flow control."""

    def __init__(self, peer: str) -> None:
        self._peer = peer
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._lines: list[str] = []  # the reply being read
        self.replies: deque[Reply] = deque()
        self.error: SmtpError | None = None  # the connection is unusable, and why
        self._waiter: asyncio.Future[None] | None = None
        self._wanted = 0
        self._paused = False
        self._resumed: asyncio.Future[None] | None = None

    def data_received(self, data: bytes) -> None:
        if self.error is not None:
            return  # aborted: nothing it says now is read
        buffer = self._buffer + data if self._buffer else data
        start = 0
        while self.error is None:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            self._line(buffer[start:end].rstrip(b"\r").decode("utf-8", "replace"))
            start = end + 1
        self._buffer = buffer[start:] if self.error is None else b""
        if len(self._buffer) > MAX_REPLY_LINE:
            self._fail(SmtpError(f"reply line from {self._peer} too long"))
        self._wake()

    def _line(self, line: str) -> None:
        if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in ("", " ", "-"):
            self._fail(SmtpError(f"malformed reply from {self._peer}: {line[:100]!r}"))
            return
        self._lines.append(line[4:])
        if line[3:4] != "-":
            self.replies.append(Reply(int(line[:3]), tuple(self._lines)))
            self._lines = []
        elif len(self._lines) > MAX_REPLY_LINES:
            self._fail(SmtpError(f"reply from {self._peer} too long"))

    def _fail(self, error: SmtpError) -> None:
        if self.error is None:
            self.error = error
            if self._transport is not None:
                self._transport.abort()  # nothing it says now can be trusted

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Duck-typed: uvloop's transports are not asyncio.Transport subclasses.
        self._transport = cast(asyncio.Transport, transport)

    def encrypted(self, transport: asyncio.Transport) -> None:
        """STARTTLS took effect: the TLS transport from now on, and nothing
        that arrived before it, which a man in the middle may have injected
        in plaintext (CVE-2011-0411's kind)."""
        self._transport = transport
        self._buffer = b""
        self._lines = []
        self.replies.clear()

    def _wake(self) -> None:
        if self.error is not None or len(self.replies) >= self._wanted:
            _settle(self._waiter)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(SmtpError(f"connection to {self._peer} lost: {exc or 'closed by peer'}"))
        self._wake()
        _settle(self._resumed)

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost says so

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        _settle(self._resumed)

    async def wait(self, count: int, timeout: float) -> None:
        """Until `count` replies are in, or the connection fails, for at most
        `timeout` seconds in all (TimeoutError)."""
        if len(self.replies) >= count or self.error is not None:
            return
        self._wanted = count
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await _within(self._waiter, timeout)
        finally:
            self._waiter = None

    async def drained(self, timeout: float) -> None:
        """Until the transport takes more writes (it was over its high-water mark)."""
        if not self._paused or self.error is not None:
            return
        self._resumed = asyncio.get_running_loop().create_future()
        try:
            await _within(self._resumed, timeout)
        finally:
            self._resumed = None


async def _within(waiter: asyncio.Future[None], timeout: float) -> None:
    """Await `waiter` for at most `timeout` seconds (TimeoutError). One timer
    handle, not asyncio.timeout's machinery: this runs several times a message."""
    timer = asyncio.get_running_loop().call_later(timeout, _expire, waiter)
    try:
        await waiter
    finally:
        timer.cancel()


def _settle(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


@dataclass
class _HeldEnd:
    """A message's data and end, held back to go with the next transaction."""

    data: bytes
    final: asyncio.Future[Reply]  # its reply, for the transaction's sender


class SmtpConnection:
    def __init__(
        self,
        transport: asyncio.Transport,
        protocol: _ReplyReader,
        timeouts: DeliveryTimeouts,
        peer: str,
    ) -> None:
        self._transport = transport
        self._protocol = protocol
        self._timeouts = timeouts
        self.peer = peer
        self.extensions: dict[str, str] = {}
        self.tls = False
        self.broken = False
        self.source = ""  # name of the egress source it is bound to, if any
        self._held: _HeldEnd | None = None  # data and end held for the next write

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
        loop = asyncio.get_running_loop()
        protocol = _ReplyReader(address)
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(lambda: protocol, address, port, local_addr=local),
                timeouts.connect,
            )
        except (OSError, TimeoutError) as exc:
            raise SmtpError(f"connect to {address}:{port} failed: {exc or 'timeout'}") from None
        conn = cls(transport, protocol, timeouts, address)
        try:
            greeting = await conn._read_reply(timeouts.greeting)
            if greeting.code != 220:
                raise SmtpError(f"greeting refused: {greeting}", greeting)
            await conn._hello(helo)
            if starttls and "STARTTLS" in conn.extensions:
                reply = await conn.command("STARTTLS", timeouts.starttls)
                if reply.code == 220:
                    try:
                        upgraded = await loop.start_tls(
                            conn._transport,
                            protocol,
                            verify or _tls_context(),
                            server_hostname=server_name,
                            ssl_handshake_timeout=timeouts.starttls,
                        )
                    except (ssl.SSLError, ssl.CertificateError) as exc:
                        why = "certificate not valid" if verify else "TLS handshake failed"
                        status = "4.7.5" if verify else "4.7.0"
                        raise SmtpError(f"{why}: {exc}", status=status) from None
                    except (OSError, TimeoutError) as exc:
                        raise SmtpError(f"TLS handshake failed: {exc or 'timeout'}") from None
                    if upgraded is None:
                        raise SmtpError("TLS handshake failed: connection closed")
                    conn._transport = upgraded
                    protocol.encrypted(upgraded)
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
        if self.broken or self._transport.is_closing():
            raise SmtpError("connection closed")
        self._transport.write(data)

    async def _read_reply(self, timeout: float) -> Reply:
        return (await self._read_replies(1, timeout))[0]

    async def _read_replies(self, count: int, timeout: float) -> list[Reply]:
        """`count` replies within `timeout` seconds in all (a pipelined group's)."""
        protocol = self._protocol
        try:
            await protocol.wait(count, timeout)
        except TimeoutError:
            self.broken = True
            raise SmtpError(f"timeout after {timeout:g}s waiting for {self.peer}") from None
        if len(protocol.replies) < count:
            self.broken = True
            assert protocol.error is not None
            raise protocol.error
        return [protocol.replies.popleft() for _ in range(count)]

    async def send(
        self,
        sender: str,
        recipients: list[str],
        data: bytes,
        *,
        smtputf8: bool = False,
        body_8bit: bool = False,
        release: asyncio.Future[None] | None = None,
    ) -> SendResult:
        """One transaction. Pipelines MAIL and RCPTs when the server offers it.

        With `release`, a server that pipelines and a message of at most
        DEFERRED_END_BYTES, the data and its end are held back to go in one
        write with the next transaction's MAIL/RCPT/DATA (RFC 2920: message
        content may start a group), or with `flush()`: `release` is set as
        soon as the connection can take the next transaction, and this
        returns once the final reply is in."""
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
            group = b"".join(c.encode("utf-8") + b"\r\n" for c in [*commands, "DATA"])
            held, self._held = self._held, None
            try:
                if held is not None:  # the previous message's data and end first
                    await self._send_out(held.data + group)
                else:
                    self._write(group)
                # The group's replies come together: they get the longest of their
                # stages' timeouts, one timer rather than one per reply.
                waits = (t.mail, t.rcpt, t.data_init, t.data_done if held else 0)
                replies = await self._read_replies(len(commands) + 1 + bool(held), max(waits))
            except SmtpError as exc:
                if held is not None:
                    held.final.set_exception(SmtpError(str(exc)))
                raise
            if held is not None:
                held.final.set_result(replies.pop(0))
            *replies, data_reply = replies
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
        if release is not None and data_reply is not None and len(payload) <= DEFERRED_END_BYTES:
            final: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
            self._held = _HeldEnd(payload, final)
            if not release.done():
                release.set_result(None)
            return SendResult(rcpt_replies, await final)
        await self._send_out(payload)
        return SendResult(rcpt_replies, await self._read_reply(t.data_done))

    async def flush(self) -> None:
        """Send a held end of data (see `send`) and read its reply; a failure
        goes to its sender, and leaves the connection broken."""
        held, self._held = self._held, None
        if held is None:
            return
        try:
            await self._send_out(held.data)
            reply = await self._read_reply(self._timeouts.data_done)
        except SmtpError as exc:
            held.final.set_exception(exc)
            return
        held.final.set_result(reply)

    async def _send_out(self, data: bytes) -> None:
        """Write `data`, and wait while the transport's buffer is over its mark."""
        self._write(data)
        try:
            await self._protocol.drained(self._timeouts.data_block)
        except TimeoutError:
            self.broken = True
            raise SmtpError(f"sending data to {self.peer} failed: timeout") from None

    async def rset(self) -> None:
        reply = await self.command("RSET", self._timeouts.mail)
        if not reply.ok:
            self.broken = True

    async def quit(self) -> None:
        try:
            await self.flush()
            if not self.broken:
                await self.command("QUIT", 10)
        except SmtpError:
            pass
        finally:
            self.abort()

    def abort(self) -> None:
        self.broken = True
        self._transport.close()
        held, self._held = self._held, None
        if held is not None:
            held.final.set_exception(SmtpError(f"connection to {self.peer} closed"))
