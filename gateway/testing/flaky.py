"""A receiving MX that misbehaves on cue: each new connection takes the next
fault from a script (greeting 421, silence after DATA, a connection dropped
mid-DATA, 452 to RCPT, 451 after DATA), and once the script is used up it
takes mail like a good server. For fault tests of the delivery side."""

from __future__ import annotations

import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

Fault = Literal["greeting-421", "silent-after-data", "drop-mid-data", "rcpt-452", "data-451", "ok"]


@dataclass
class Delivered:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    at: float = field(default_factory=time.time)


class FlakyMx:
    def __init__(
        self,
        ip: str,
        port: int,
        script: list[Fault],
        rcpt_policy: Callable[[str], str | None] | None = None,
    ) -> None:
        """`rcpt_policy(address)` -> a reply refusing that recipient, or None."""
        self.script = list(script)
        self.rcpt_policy = rcpt_policy
        self.faults_seen: list[Fault] = []
        self.messages: list[Delivered] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            timeout = 60

            def handle(self) -> None:
                with outer.lock:
                    fault: Fault = outer.script.pop(0) if outer.script else "ok"
                    outer.faults_seen.append(fault)
                outer._session(self, fault)

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self._server = Server((ip, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _session(self, conn: socketserver.StreamRequestHandler, fault: Fault) -> None:
        def say(line: str) -> None:
            conn.wfile.write(line.encode() + b"\r\n")

        if fault == "greeting-421":
            say("421 4.3.2 mx.test busy, try later")
            return
        say("220 mx.test ESMTP")
        sender, rcpts = "", list[str]()
        while line := conn.rfile.readline():
            command = line.decode("utf-8", "replace").strip()
            verb = command[:4].upper()
            if verb in ("EHLO", "HELO"):
                say("250-mx.test\r\n250 8BITMIME" if verb == "EHLO" else "250 mx.test")
            elif verb == "MAIL":
                sender, rcpts = command[10:].strip("<> "), []
                say("250 2.1.0 OK")
            elif verb == "RCPT":
                address = command[8:].strip().strip("<>")
                refusal = self.rcpt_policy(address) if self.rcpt_policy else None
                if fault == "rcpt-452":
                    say("452 4.5.3 Too many recipients for now")
                elif refusal:
                    say(refusal)
                else:
                    rcpts.append(address)
                    say("250 2.1.5 OK")
            elif verb == "DATA":
                say("354 go ahead")
                if fault == "drop-mid-data":
                    conn.rfile.readline()  # one line of the message, then gone
                    return
                data = self._read_data(conn)
                if fault == "silent-after-data":
                    conn.rfile.read()  # never answer; wait for the client to give up
                    return
                if fault == "data-451":
                    say("451 4.3.0 Local error, try again")
                    continue
                with self.lock:
                    self.messages.append(Delivered(sender, rcpts, data))
                say("250 2.0.0 OK queued")
            elif verb == "RSET":
                sender, rcpts = "", []
                say("250 2.0.0 OK")
            elif verb == "QUIT":
                say("221 2.0.0 Bye")
                return
            else:
                say("502 5.5.1 Not implemented")

    @staticmethod
    def _read_data(conn: socketserver.StreamRequestHandler) -> bytes:
        lines = []
        while (line := conn.rfile.readline()) not in (b".\r\n", b""):
            lines.append(line[1:] if line.startswith(b".") else line)
        return b"".join(lines)

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Delivered]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.05)
        raise TimeoutError(f"{len(self.messages)} of {count} messages in {timeout}s")

    def __enter__(self) -> FlakyMx:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
