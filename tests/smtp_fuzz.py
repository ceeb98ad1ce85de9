"""Fuzzing the live SMTP listener: hypothesis drives random sessions (valid,
malformed and hostile commands, message bodies with bare CR/LF, NULs, long
lines and dots, AUTH exchanges, pipelining-sized bursts) against a running
gateway, one connection per example.

Checked after every command: one well-formed reply (code, separator, text,
CRLF) within 10 s; the connection closes only after a 221, a 421 or
aiosmtpd's "too many unrecognized commands"; after every session the gateway
still greets a new client; at the end no session raised an unexpected error
(`session_error` in the log, which the client sees as 451 "Internal error").

Short run in the suite (tests/test_smtp_fuzz.py); long runs by hand:

    .venv/bin/python -m tests.smtp_fuzz --minutes 10

The regression corpus: REGRESSIONS below (sessions that once broke the
gateway, replayed first by every run) and tests/fuzz_corpus/smtp, hypothesis's
example database, which keeps a failing example until it passes.
"""

from __future__ import annotations

import argparse
import base64
import re
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from gateway.testing import DnsServer, GatewayProcess
from tests.zones import ZONE

CORPUS = Path(__file__).parent / "fuzz_corpus" / "smtp"
REPLY_LINE = re.compile(rb"^[2-5]\d\d([ -].*)?$")
CLOSING = (b"221", b"421", b"502 5.5.1 Too many unrecognized")

# -- what a session is made of -----------------------------------------------------

text = st.binary(min_size=0, max_size=80).map(lambda b: b.replace(b"\n", b""))
addresses = st.sampled_from(
    [b"ann@down.test", b"bob@good.test", b"<>", b"", b"no-at-sign", b"a@b", b"x@[127.0.0.1]",
     b"\xc3\xa9l\xc3\xa8ve@down.test", b"a" * 300 + b"@down.test", b"postmaster",
     b'"quoted local"@down.test', b"<<nested>>@down.test", b"user@down.test:bad"]
) | text  # fmt: skip
params = st.lists(
    st.sampled_from([b"SIZE=10", b"SIZE=99999999999", b"SIZE=abc", b"BODY=8BITMIME",
                     b"BODY=7BIT", b"BODY=BINARYMIME", b"SMTPUTF8", b"RET=HDRS", b"X=Y", b"="])
    | text,
    max_size=3,
)  # fmt: skip


@st.composite
def mail_or_rcpt(draw: st.DrawFn) -> bytes:
    verb = draw(st.sampled_from([b"MAIL FROM:", b"RCPT TO:", b"mail from: ", b"RCPT TO "]))
    address = draw(addresses)
    bracketed = draw(st.booleans())
    arg = b"<" + address + b">" if bracketed else address
    return b" ".join([verb + arg, *draw(params)]).rstrip()


@st.composite
def auth(draw: st.DrawFn) -> list[bytes]:
    mechanism = draw(st.sampled_from([b"PLAIN", b"LOGIN", b"CRAM-MD5", b"XOAUTH2", b""]))
    blob = base64.b64encode(draw(st.binary(max_size=40)))
    initial = draw(st.sampled_from([b"", blob, b"=", b"*", b"not base64!"]))
    lines = [b" ".join(x for x in (b"AUTH", mechanism, initial) if x)]
    lines += draw(st.lists(st.sampled_from([blob, b"*", b"", b"!!"]), max_size=2))
    return lines


body_lines = st.lists(
    st.sampled_from([b"From: a@down.test", b"Subject: fuzz", b"", b".", b"..", b".x",
                     b"Content-Type: multipart/mixed; boundary=b", b"--b", b"--b--",
                     b"Content-Transfer-Encoding: base64", b"=?utf-8?b?w6k=?=",
                     b"x" * 1200, b"\x00", b"bare\rcr", b"bare\nlf", b"\r.\r", b"\n.\n"])
    | st.binary(max_size=100),
    max_size=30,
)  # fmt: skip


def as_body(lines: list[bytes]) -> bytes:
    """Body bytes that cannot end DATA before we mean to (which would desync
    our reply counting, not test the server)."""
    body = b"\r\n".join(lines)
    while b"\r\n.\r\n" in body:
        body = body.replace(b"\r\n.\r\n", b"\r\n..\r\n")
    if body.startswith(b".\r\n"):
        body = b"." + body
    return body


Step = tuple[str, Any]
simple_commands = st.sampled_from(
    [b"EHLO client.test", b"HELO client.test", b"EHLO", b"RSET", b"NOOP", b"VRFY root",
     b"EXPN list", b"HELP", b"STARTTLS", b"BDAT 10", b"DATA x", b"QUIT now", b"TURN", b""]
)  # fmt: skip
greetings = st.tuples(st.sampled_from([b"EHLO ", b"HELO "]), text).map(b"".join)
steps = st.one_of(
    st.tuples(st.just("line"), mail_or_rcpt()),
    st.tuples(st.just("line"), simple_commands),
    st.tuples(st.just("line"), greetings),
    st.tuples(st.just("line"), text),
    st.tuples(st.just("auth"), auth()),
    st.tuples(st.just("data"), body_lines.map(as_body)),
)
# Most sessions open with a valid transaction, so that what follows (DATA
# bodies above all) reaches the code behind the envelope checks.
OPENING: list[Step] = [
    ("line", b"EHLO client.test"),
    ("line", b"MAIL FROM:<app@sender.test>"),
    ("line", b"RCPT TO:<ann@down.test>"),
]
sessions = st.builds(
    lambda opened, middle, body: (OPENING if opened else []) + middle + body,
    st.integers(0, 9).map(lambda n: n < 7),
    st.lists(steps, max_size=12),
    st.lists(st.tuples(st.just("data"), body_lines.map(as_body)), max_size=1),
).filter(bool)

# Sessions that broke the gateway once (each with what it broke).
REGRESSIONS: list[list[Step]] = [
    # CPython's address parser raised IndexError under aiosmtpd: 451 internal error.
    [("line", b"EHLO client.test"), ("line", b'MAIL FROM:()"')],
    [("line", b"EHLO client.test"), ("line", b"MAIL FROM:<a@down.test>"),
     ("line", b'RCPT TO:()"')],
]  # fmt: skip


# -- talking to the gateway --------------------------------------------------------


class Violation(AssertionError):
    pass


def read_reply(sock: socket.socket, buffer: bytearray) -> bytes:
    """One whole reply (every line of a multi-line one); b"" if the server closed."""
    deadline = time.monotonic() + 10
    lines: list[bytes] = []
    while True:
        while b"\r\n" not in buffer:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise Violation(f"no reply within 10 s (so far {lines!r})") from None
            if not chunk:
                if lines or buffer:
                    raise Violation(f"closed mid-reply: {lines!r} {bytes(buffer)!r}")
                return b""
            buffer += chunk
        line, _, rest = bytes(buffer).partition(b"\r\n")
        buffer[:] = rest
        if not REPLY_LINE.match(line):
            raise Violation(f"malformed reply line {line!r}")
        lines.append(line)
        if line[3:4] != b"-":
            return b"\r\n".join(lines)


def run_session(port: int, session: list[Step]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        buffer = bytearray()
        last = read_reply(sock, buffer)
        if not last.startswith(b"220"):
            raise Violation(f"greeting {last!r}")
        for kind, value in session:
            lines = value if kind == "auth" else [b"DATA"] if kind == "data" else [value]
            for line in lines:
                try:
                    sock.sendall(line + b"\r\n")
                    reply = read_reply(sock, buffer)
                except (BrokenPipeError, ConnectionResetError):
                    reply = b""
                if not reply:
                    _closed_after(last)
                    return
                last = reply
                if reply.startswith(b"334"):
                    continue  # AUTH wants the next line
            if kind == "data" and last.startswith(b"354"):
                sock.sendall(value + b"\r\n.\r\n")
                last = read_reply(sock, buffer)
                if not last:
                    raise Violation("closed without a reply to the end of DATA")
            if last.startswith(b"451 4.3.0 Internal error"):
                raise Violation(f"internal error after {kind} {value!r}")


def _closed_after(last: bytes) -> None:
    if not last.startswith(CLOSING):
        raise Violation(f"connection closed after {last!r}")


def check_alive(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        greeting = read_reply(sock, bytearray())
        if not greeting.startswith(b"220"):
            raise Violation(f"the gateway no longer greets: {greeting!r}")


def fuzz(port: int, examples: int, seconds: float) -> int:
    """Run sessions until `examples` or `seconds` is reached; how many ran."""
    for session in REGRESSIONS:
        run_session(port, session)
    ran = len(REGRESSIONS)
    deadline = time.monotonic() + seconds

    @settings(
        max_examples=examples,
        deadline=None,
        database=DirectoryBasedExampleDatabase(str(CORPUS)),
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(sessions)
    def one(session: list[Step]) -> None:
        nonlocal ran
        if time.monotonic() > deadline:
            return
        ran += 1
        run_session(port, session)
        check_alive(port)

    one()
    return ran


def fuzz_config(dns: DnsServer) -> dict[str, Any]:
    return {
        "dns": {"nameservers": [dns.address], "port": dns.port, "timeout": "1s"},
        "delivery": {"port": 9, "timeouts": {"connect": "1s"}},  # nothing listens
        "smtp": {"max_message_size": 64 * 1024, "max_recipients": 5},
        "log": {"level": "debug"},  # `received` lines count the accepted messages
    }


def session_errors(gw: GatewayProcess) -> list[dict[str, Any]]:
    return gw.events("session_error")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    args = parser.parse_args()
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory() as work,
        DnsServer({"test": ZONE}) as dns,
        GatewayProcess(Path(work), fuzz_config(dns)) as gw,
    ):
        total = 0
        while time.monotonic() - started < args.minutes * 60:
            left = args.minutes * 60 - (time.monotonic() - started)
            total += fuzz(gw.port, 500, left)
            print(f"{total} sessions, {time.monotonic() - started:.0f} s", file=sys.stderr)
        errors = session_errors(gw)
        received = len(gw.events("received"))
        refused = len([e for e in gw.events("rejected") if e.get("qid")])  # at end of DATA
    print(f"{total} sessions in {time.monotonic() - started:.0f} s; {received + refused} "
          f"reached the end of DATA ({received} accepted, {refused} refused); "
          f"{len(errors)} session errors")  # fmt: skip
    for error in errors[:10]:
        print(error)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
