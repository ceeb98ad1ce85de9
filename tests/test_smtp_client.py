"""The outbound SMTP client against scripted servers on loopback: replies cut
anywhere and pipelined replies in one piece are read alike; a malformed reply,
a silent server and a server that hangs up each end the session with an
error; and replies that arrived in plaintext do not survive STARTTLS."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from gateway.config import DeliveryTimeouts
from gateway.delivery.smtp_client import SendResult, SmtpConnection, SmtpError, _ReplyReader

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
T = TypeVar("T")
FAST = DeliveryTimeouts(greeting=2, ehlo=2, mail=2, rcpt=2, data_init=2, data_done=2)


def run_against(script: Script, client: Callable[[int], Awaitable[T]]) -> T:
    """`client(port)` against a server on 127.0.0.1 that runs `script` per connection."""

    async def main() -> T:
        server = await asyncio.start_server(script, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await client(port)
        finally:
            server.close()

    return asyncio.run(main())


async def _say(writer: asyncio.StreamWriter, *pieces: bytes) -> None:
    """Each piece in a write of its own, a moment apart (separate TCP segments)."""
    for piece in pieces:
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0.02)


async def _lines(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    return [await reader.readline() for _ in range(count)]


def test_replies_cut_anywhere_and_pipelined_replies_in_one_piece() -> None:
    seen: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _say(writer, b"22", b"0 mx ready\r\n")
        await reader.readline()  # EHLO
        await _say(
            writer, b"250-mx\r\n250-PIPE", b"LINING\r\n250-SIZE 1000\r", b"\n250 8BITMIME\r\n"
        )
        seen.extend(await _lines(reader, 4))  # MAIL, RCPT, RCPT, DATA in one group
        writer.write(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n354 go\r\n")
        body = await reader.readuntil(b"\r\n.\r\n")
        seen.append(body)
        await _say(writer, b"250 2.0.0 queued\r\n")
        await reader.readline()  # QUIT
        writer.write(b"221 bye\r\n")
        writer.close()

    async def client(port: int) -> SendResult:
        conn = await SmtpConnection.open("127.0.0.1", port, helo="gw.test", timeouts=FAST)
        assert set(conn.extensions) == {"PIPELINING", "SIZE", "8BITMIME"}
        result = await conn.send("a@s.test", ["b@r.test", "c@r.test"], b"Subject: x\r\n\r\n.hi\r\n")
        await conn.quit()
        return result

    result = run_against(script, client)
    assert [str(r) for r in result.rcpts] == ["250 2.1.5 ok", "550 5.1.1 no such user"]
    assert str(result.data) == "250 2.0.0 queued"
    assert seen[0] == b"MAIL FROM:<a@s.test> SIZE=19\r\n"
    assert seen[3] == b"DATA\r\n"
    assert seen[4] == b"Subject: x\r\n\r\n..hi\r\n.\r\n"  # dot-stuffed


@pytest.mark.parametrize(
    ("after_ehlo", "error"),
    [
        (b"25O not a code\r\n", "malformed reply"),
        (b"", "timeout after 0.5s"),
        (None, "connection to 127.0.0.1 lost"),
        (b"250-" + b"x" * 5000, "too long"),
    ],
)
def test_a_broken_peer_ends_the_session_with_an_error(after_ehlo: bytes | None, error: str) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mx\r\n")
        await reader.readline()
        if after_ehlo is None:
            writer.close()  # hangs up
            return
        writer.write(after_ehlo)
        await asyncio.sleep(2)
        writer.close()

    async def client(port: int) -> str:
        timeouts = DeliveryTimeouts(greeting=2, ehlo=0.5)
        with pytest.raises(SmtpError) as raised:
            await SmtpConnection.open("127.0.0.1", port, helo="gw.test", timeouts=timeouts)
        return str(raised.value)

    assert error in run_against(script, client)


def test_replies_before_starttls_took_effect_are_dropped() -> None:
    # A man in the middle appends a reply to the 220 of STARTTLS, in plaintext,
    # to answer the client's first command over TLS (CVE-2011-0411's kind).
    reader = _ReplyReader("mx")
    reader.data_received(b"220 2.0.0 go ahead\r\n250 injected\r\n250-half")
    assert [r.code for r in reader.replies] == [220, 250]
    reader.replies.popleft()  # the client reads the 220, then upgrades
    reader.encrypted(object())  # type: ignore[arg-type]
    assert not reader.replies
    reader.data_received(b"250 real\r\n")
    assert str(reader.replies.popleft()) == "250 real"


async def _first_transaction_to_data(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Greeting, EHLO with PIPELINING, and MAIL, RCPT and DATA answered with 354."""
    writer.write(b"220 mx\r\n")
    await reader.readline()
    writer.write(b"250-mx\r\n250 PIPELINING\r\n")
    await _lines(reader, 3)
    writer.write(b"250 ok\r\n250 ok\r\n354 go\r\n")


def _pipelining_mx(after_first_end: bytes) -> Script:
    """An MX that checks the first message's end and the second's commands
    come in one write, then answers `after_first_end` (or hangs up if empty)."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _first_transaction_to_data(reader, writer)
        chunk = await reader.read(65536)
        if not chunk.endswith(b"\r\n.\r\nMAIL FROM:<a@s.test>\r\nRCPT TO:<c@r.test>\r\nDATA\r\n"):
            writer.write(b"421 the end and the next commands came apart\r\n")
        if not after_first_end:
            writer.close()
            return
        writer.write(after_first_end)
        await reader.readuntil(b"\r\n.\r\n")
        writer.write(b"250 2.0.0 queued as 2\r\n")
        await reader.readline()  # QUIT
        writer.write(b"221 bye\r\n")
        writer.close()

    return script


def test_a_held_end_of_data_goes_with_the_next_transaction() -> None:
    async def client(port: int) -> tuple[str, str]:
        conn = await SmtpConnection.open("127.0.0.1", port, helo="gw.test", timeouts=FAST)
        release = asyncio.get_running_loop().create_future()
        first = asyncio.create_task(
            conn.send("a@s.test", ["b@r.test"], b"one\r\n", release=release)
        )
        await release  # the connection may take the next transaction: the first waits
        assert not first.done()
        second = await conn.send("a@s.test", ["c@r.test"], b"two\r\n")
        await conn.quit()
        return str((await first).data), str(second.data)

    replies = b"250 2.0.0 queued as 1\r\n250 ok\r\n250 ok\r\n354 go\r\n"
    assert run_against(_pipelining_mx(replies), client) == (
        "250 2.0.0 queued as 1",
        "250 2.0.0 queued as 2",
    )


def test_a_connection_lost_with_a_held_end_fails_both_transactions() -> None:
    async def client(port: int) -> list[str]:
        conn = await SmtpConnection.open("127.0.0.1", port, helo="gw.test", timeouts=FAST)
        release = asyncio.get_running_loop().create_future()
        first = asyncio.create_task(
            conn.send("a@s.test", ["b@r.test"], b"one\r\n", release=release)
        )
        await release
        errors = []
        for attempt in (conn.send("a@s.test", ["c@r.test"], b"two\r\n"), first):
            with pytest.raises(SmtpError) as raised:
                await attempt
            errors.append(str(raised.value))
        conn.abort()
        return errors

    errors = run_against(_pipelining_mx(b""), client)
    assert all("connection to 127.0.0.1 lost" in e for e in errors)


def test_flush_sends_a_held_end_and_hands_its_reply_to_the_sender() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _first_transaction_to_data(reader, writer)
        await reader.readuntil(b"\r\n.\r\n")
        writer.write(b"550 5.7.1 content refused\r\n")
        await reader.readline()
        writer.write(b"221 bye\r\n")

    async def client(port: int) -> str:
        conn = await SmtpConnection.open("127.0.0.1", port, helo="gw.test", timeouts=FAST)
        release = asyncio.get_running_loop().create_future()
        first = asyncio.create_task(
            conn.send("a@s.test", ["b@r.test"], b"one\r\n", release=release)
        )
        await release
        await conn.flush()
        result = await first
        await conn.quit()
        return str(result.data)

    assert run_against(script, client) == "550 5.7.1 content refused"
