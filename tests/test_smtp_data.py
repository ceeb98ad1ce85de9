"""The DATA reader against a line-by-line reading of the same bytes (what
aiosmtpd does, and RFC 5321 4.5.2 says): same message, same refusals, for
any content, any way the bytes arrive, any limits."""

from __future__ import annotations

import asyncio
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.smtp_data import read_data

AFTER = b"QUIT\r\n"  # what the client sends next: must stay unread


def line_by_line(stream: bytes, size_limit: int, line_limit: int) -> tuple[bytes, bool, bytes]:
    """The message, whether it is refused, and what follows the end, reading
    lines that end in CRLF."""
    lines, size, refused, pos = [], 0, False, 0
    while True:
        end = stream.index(b"\r\n", pos) + 2
        line, pos = stream[pos:end], end
        if line == b".\r\n":
            break
        size += len(line)
        refused = refused or len(line) > line_limit or size > size_limit
        lines.append(line[1:] if line.startswith(b".") else line)
    return (b"" if refused else b"".join(lines)), refused, stream[pos:]


def read(
    stream: bytes, cuts: list[int], size_limit: int, line_limit: int
) -> tuple[bytes, str | None, bytes]:
    async def run() -> tuple[bytes, str | None, bytes]:
        reader = asyncio.StreamReader(limit=64)  # small, so long lines overrun it
        edges = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
        for start, end in itertools.pairwise(edges):
            reader.feed_data(stream[start:end])
        reader.feed_eof()
        content, refusal = await read_data(reader, size_limit, line_limit)
        return content, refusal, await reader.read()

    return asyncio.run(run())


# Bytes that make the edge cases: dots, CR and LF alone or together, NUL.
PIECES = st.sampled_from([b"a", b"b", b".", b"..", b"\r", b"\n", b"\r\n", b"\0", b"x" * 30])


@settings(max_examples=400, deadline=None)
@given(
    body=st.lists(PIECES, max_size=40).map(b"".join),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=6),
    size_limit=st.integers(min_value=1, max_value=300),
    line_limit=st.integers(min_value=3, max_value=120),
)
def test_read_data_matches_reading_line_by_line(
    body: bytes, cuts: list[int], size_limit: int, line_limit: int
) -> None:
    stream = body + (b"" if body.endswith(b"\r\n") or not body else b"\r\n") + b".\r\n" + AFTER
    expected, refused, after = line_by_line(stream, size_limit, line_limit)
    content, refusal, rest = read(stream, cuts, size_limit, line_limit)
    assert (refusal is not None) == refused, (stream, refusal)
    assert content == expected
    assert rest == after  # nothing past the end of DATA was taken


def test_refusals_and_the_smuggling_look_alikes() -> None:
    # Each look-alike of an end is text: the message goes on to the real end
    # (a line that starts with a dot loses that one dot, as any stuffed line).
    for fake in (b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r", b"\r\n.\n", b"\r\n\0.\r\n"):
        stream = b"a" + fake + b"b\r\n.\r\n"
        content, refusal, rest = read(stream, [], 1000, 1000)
        assert refusal is None
        assert rest == b""
        assert content == (b"a" + fake + b"b\r\n").replace(b"\r\n.", b"\r\n")
        assert b"b" in content
    assert read(b".\r\n", [], 10, 10)[:2] == (b"", None)  # an empty message
    assert (
        read(b"x" * 200 + b"\r\n.\r\n", [], 1000, 100)[1]
        == "500 Line too long (see RFC5321 4.5.3.1.6)"
    )
    assert read(b"x\r\n" * 50 + b".\r\n", [], 100, 100)[1] == "552 Error: Too much mail data"
