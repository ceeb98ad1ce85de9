"""Between ingress processes and the queue manager: a Unix socket carrying
JSON lines.

The spool is the contract: a worker answers 250 only once the message is in
the spool, and then tells the queue manager its queue ID, envelope and place
(`at`: segment, offset, length; null for a file of its own); the queue
manager indexes and schedules it. A notice lost in a crash is harmless: the
queue manager finds the message when it looks over the worker's segment
(`Spool.collect`), or rebuilds its queue from the spool when it starts.
Reports to our feedback addresses are processed by the queue manager (it
knows what was sent and keeps the complaint rates), so a worker hands them
over and waits for the reply to give its client.

    worker -> manager   {"op": "queued", "qid": Q, "envelope": {...}, "at": [S, O, L],
                         "dkim": [...]}  (the manager writes its `received` record)
    worker -> manager   {"op": "stats", "inbound": N}        (open sessions, each second)
    worker -> manager   {"op": "account", "kind": K, "fields": {...}}  (accounting log)
    worker -> manager   {"op": "feedback", "id": N, "rcpts": [...], "data": BASE64}
    manager -> worker   {"id": N, "reply": "250 2.0.0 Report received"}
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from gateway import json_lines
from gateway.accounting import account
from gateway.config import FeedbackConfig
from gateway.feedback.processor import FeedbackIdentity
from gateway.log import event
from gateway.spool import Location, SpooledMessage

MAX_LINE = 64 * 1024 * 1024  # a feedback report, base64: within max_message_size


class IngressBridge:
    """The queue manager's end: accepts workers, schedules what they queued."""

    def __init__(
        self,
        path: Path,
        queued: Callable[[str, dict[str, Any], Location | None, list[str]], Awaitable[None]],
        feedback: Callable[[list[str], bytes], Awaitable[str]],
    ) -> None:
        self.path = path
        self._queued = queued
        self._feedback = feedback
        self._server: asyncio.Server | None = None
        self._inbound: dict[int, int] = {}  # per worker connection: its open sessions

    @property
    def inbound(self) -> int:
        """Open SMTP sessions in all workers, as last reported."""
        return sum(self._inbound.values())

    async def start(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, self.path, limit=MAX_LINE)
        os.chmod(self.path, 0o600)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        worker = id(writer)
        try:
            while line := await reader.readline():
                request = json_lines.loads(line)
                if request["op"] == "stats":
                    self._inbound[worker] = int(request["inbound"])
                elif request["op"] == "account":
                    account(request["kind"], **request["fields"])
                elif request["op"] == "queued":
                    at = request.get("at")
                    await self._queued(
                        request["qid"], request["envelope"], at and tuple(at), request["dkim"]
                    )
                elif request["op"] == "feedback":
                    raw = base64.b64decode(request["data"])
                    reply = await self._feedback(request["rcpts"], raw)
                    writer.write(json_lines.dumps_line({"id": request["id"], "reply": reply}))
        except (ConnectionError, ValueError, KeyError) as exc:
            event("ingress_link_error", logging.ERROR, error=repr(exc))
        finally:
            self._inbound.pop(worker, None)
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class ManagerLink:
    """A worker's end: tells the queue manager what was queued."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._writer: asyncio.StreamWriter | None = None
        self._waiting: dict[int, asyncio.Future[str]] = {}
        self._ids = itertools.count(1)
        self._reader_task: asyncio.Task[None] | None = None
        self._outbox: list[bytes] = []  # lines written together once per loop turn
        self.lost = asyncio.Event()  # the queue manager went away

    async def connect(self) -> None:
        reader, self._writer = await asyncio.open_unix_connection(self._path, limit=MAX_LINE)
        self._reader_task = asyncio.create_task(self._read(reader), name="manager-link")

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                answer = json_lines.loads(line)
                future = self._waiting.pop(answer["id"], None)
                if future is not None and not future.done():
                    future.set_result(answer["reply"])
        finally:
            self.lost.set()
            for future in self._waiting.values():
                if not future.done():
                    future.set_result("451 4.3.0 Could not process the report; try again later")

    def _send(self, message: dict[str, Any]) -> None:
        if self._writer is None or self.lost.is_set():
            raise ConnectionError("the queue manager is gone")
        line = json_lines.dumps_line(message)
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append(line)

    def _flush(self) -> None:
        lines, self._outbox = self._outbox, []
        if self._writer is not None and not self.lost.is_set():
            self._writer.write(b"".join(lines))

    def queued(self, message: SpooledMessage, dkim: list[str]) -> None:
        """The message is on disk: schedule it and account for it (IngressHandler's
        `received`; `dkim`: the signatures added)."""
        with contextlib.suppress(ConnectionError):
            # If this fails the manager is restarting and finds it in the spool.
            # The envelope as spooled, so the manager need not read it back.
            self._send(
                {
                    "op": "queued",
                    "qid": message.qid,
                    "envelope": message.envelope.__dict__,
                    "at": message.location,
                    "dkim": dkim,
                }
            )

    def account(self, kind: str, fields: dict[str, Any]) -> None:
        """An accounting record, for the manager to write (accounting.forward_accounting)."""
        with contextlib.suppress(ConnectionError):
            self._send({"op": "account", "kind": kind, "fields": fields})

    def stats(self, inbound: int) -> None:
        with contextlib.suppress(ConnectionError):
            self._send({"op": "stats", "inbound": inbound})

    async def feedback(self, recipients: list[str], raw: bytes) -> str:
        number = next(self._ids)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting[number] = future
        self._send(
            {"op": "feedback", "id": number, "rcpts": recipients,
             "data": base64.b64encode(raw).decode()}
        )  # fmt: skip
        return await future

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()


class RemoteFeedback(FeedbackIdentity):
    """Feedback addresses as a worker sees them: reports go to the manager."""

    def __init__(self, config: FeedbackConfig, hostname: str, link: ManagerLink) -> None:
        super().__init__(config, hostname)
        self._link = link

    async def receive(self, recipients: list[str], raw: bytes) -> str:
        return await self._link.feedback(recipients, raw)
