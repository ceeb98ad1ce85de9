"""The durable spool: the contract between ingress and delivery.

Layout under ``<data_dir>/spool``:

- ``tmp/<qid>``: a message being written; anything here at start is debris
  from a crash before the 250 was sent, and is removed.
- ``queue/<qid>``: one accepted message: a header line ``DGSPOOL1 <json>\\n``
  with the envelope, then the message bytes exactly as they will be sent.
- ``queue/<qid>.log``: the recipients' journal, JSON lines appended with
  fdatasync: each outcome (delivered, bounced, expired) and each deferral with
  its next-attempt time. Replaying it at start rebuilds every recipient's state,
  so a recipient recorded as delivered is never delivered again.

A message file is written to ``tmp/``, fsynced, renamed into ``queue/``, and
the directory fsynced before ingress answers 250. Small messages are written
by group commit: those that arrive while a batch is on its way to disk go
together in the next, one trip to an I/O thread and one directory fsync per
batch. Directory fsyncs are also coalesced across threads: one covers every
rename that came before it. Finished messages are removed in batches the same
way.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from gateway import _core
from gateway.log import event

MAGIC = b"DGSPOOL1 "
T = TypeVar("T")
Status = Literal["pending", "delivered", "bounced", "expired"]
FINAL: frozenset[str] = frozenset({"delivered", "bounced", "expired"})
SYNC_READ_BYTES = 256 * 1024
BATCH_BYTES = 256 * 1024  # larger messages are stored on their own


class SpoolError(Exception):
    """The spool could not store or read a message (disk full, I/O error)."""

    def __init__(self, message: str, no_space: bool = False) -> None:
        super().__init__(message)
        self.no_space = no_space  # the filesystem is full (or over quota)


@dataclass
class Envelope:
    """What the spool keeps about a message besides its bytes."""

    qid: str
    sender: str  # "" is the null sender <>
    recipients: list[str]
    received_at: float
    client_ip: str = ""
    helo: str = ""
    size: int = 0
    smtputf8: bool = False
    body_8bit: bool = False
    tenant: str = ""
    campaign: str = ""
    stream: str = ""  # from X-Gateway-Stream: "marketing", "transactional", ...
    message_id: str = ""

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, ensure_ascii=False, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Envelope:
        return cls(**json.loads(raw))


@dataclass
class RecipientState:
    address: str
    status: Status = "pending"
    attempts: int = 0
    next_attempt: float = 0.0
    last_reply: str = ""
    dsn: str = ""  # queue ID of the DSN that reported this recipient's failure


@dataclass
class SpooledMessage:
    envelope: Envelope
    recipients: list[RecipientState] = field(default_factory=list)

    @property
    def qid(self) -> str:
        return self.envelope.qid

    @property
    def done(self) -> bool:
        return all(r.status in FINAL for r in self.recipients)

    def apply(self, record: dict[str, Any]) -> None:
        rcpt = self.recipients[record["i"]]
        rcpt.status = record["s"]
        rcpt.attempts = record.get("a", rcpt.attempts)
        rcpt.next_attempt = record.get("n", 0.0)
        rcpt.last_reply = record.get("r", rcpt.last_reply)
        rcpt.dsn = record.get("dsn", rcpt.dsn)


class _GroupSync:
    """fsync of one directory, shared by every caller waiting at the same time."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        self._cond = threading.Condition()
        self._requested = 0
        self._synced = 0
        self._running = False

    def sync(self) -> None:
        with self._cond:
            self._requested += 1
            ticket = self._requested
            while self._synced < ticket:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                target = self._requested
                self._cond.release()
                try:
                    os.fsync(self._fd)
                finally:
                    self._cond.acquire()
                    self._running = False
                    self._cond.notify_all()
                self._synced = max(self._synced, target)

    def close(self) -> None:
        os.close(self._fd)


class _Batches(Generic[T]):
    """Items handed to `work` on an I/O thread in batches: while one batch is
    on its way, the items that arrive wait and go together in the next. Each
    trip wakes a thread and then the event loop, which costs more than the
    file operations of a small message; under load a batch costs what one
    item did. `work` returns an error or None per item."""

    def __init__(
        self, pool: ThreadPoolExecutor, work: Callable[[list[T]], list[Exception | None]]
    ) -> None:
        self._pool = pool
        self._work = work
        self._waiting: list[tuple[T, asyncio.Future[None]]] = []
        self._drainer: asyncio.Future[None] | None = None

    async def run(self, item: T) -> None:
        """Returns once `item` is done; raises its error. A cancelled caller's
        item is still done."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, done))
        if self._drainer is None:
            self._drainer = asyncio.ensure_future(self._drain())
        await asyncio.shield(done)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                items = [item for item, _ in batch]
                errors: list[Exception | None]
                try:
                    errors = await loop.run_in_executor(self._pool, self._work, items)
                except Exception as exc:  # the I/O threads are gone (shutting down)
                    errors = [exc] * len(batch)
                for (_, done), error in zip(batch, errors, strict=True):
                    if error is None:
                        done.set_result(None)
                    else:
                        done.set_exception(error)
        finally:
            self._drainer = None


def _spool_error(envelope: Envelope, exc: OSError) -> SpoolError:
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return SpoolError(f"cannot store {envelope.qid}: {exc.strerror or exc}", full)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class Spool:
    def __init__(self, root: Path, io_threads: int = 8) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.queue = root / "queue"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.queue.mkdir(parents=True, exist_ok=True)
        self._dirsync = _GroupSync(self.queue)
        self._pool = ThreadPoolExecutor(io_threads, thread_name_prefix="spool")
        self._stores = _Batches(self._pool, self._store_batch)  # group commit
        self._finishes = _Batches(self._pool, self._finish)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._dirsync.close()

    # -- writing -------------------------------------------------------------

    def new_qid(self) -> str:
        return _core.new_queue_id()

    async def store(self, envelope: Envelope, data: bytes) -> None:
        """Durably store a new message; returns only once it survives a crash.

        Small messages go by group commit (`_Batches`): a batch is written,
        renamed into the queue and covered by one directory fsync. A large
        one is written on its own, so it holds up nobody."""
        if len(data) > BATCH_BYTES:
            await asyncio.get_running_loop().run_in_executor(
                self._pool, self._store, envelope, data
            )
            return
        try:
            await self._stores.run((envelope, data))
        except SpoolError:
            raise
        except Exception as exc:
            raise SpoolError(f"cannot store {envelope.qid}: {exc}") from exc

    def _store_batch(self, batch: list[tuple[Envelope, bytes]]) -> list[Exception | None]:
        errors: list[Exception | None] = []
        for envelope, data in batch:
            try:
                self._write(envelope, data)
                errors.append(None)
            except SpoolError as exc:
                errors.append(exc)
        if any(e is None for e in errors):
            try:
                self._dirsync.sync()
            except OSError as exc:
                for i, (envelope, _) in enumerate(batch):
                    if errors[i] is None:
                        # Not durable, so not acknowledged: nor kept, else the
                        # client's retry would make it a duplicate.
                        with contextlib.suppress(OSError):
                            (self.queue / envelope.qid).unlink()
                        errors[i] = _spool_error(envelope, exc)
        return errors

    def _store(self, envelope: Envelope, data: bytes) -> None:
        self._write(envelope, data)
        try:
            self._dirsync.sync()
        except OSError as exc:
            with contextlib.suppress(OSError):
                (self.queue / envelope.qid).unlink()
            raise _spool_error(envelope, exc) from exc

    def _write(self, envelope: Envelope, data: bytes) -> None:
        """Written, fsynced and renamed into the queue (the rename not yet durable)."""
        tmp_path = self.tmp / envelope.qid
        try:
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                _write_all(fd, MAGIC + envelope.to_json() + b"\n")
                _write_all(fd, data)
                os.fdatasync(fd)
            finally:
                os.close(fd)
            os.rename(tmp_path, self.queue / envelope.qid)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp_path.unlink(missing_ok=True)
            raise _spool_error(envelope, exc) from exc

    def free_space(self) -> int:
        """Bytes an unprivileged writer can still use on the spool's filesystem."""
        stats = os.statvfs(self.queue)
        return stats.f_bavail * stats.f_frsize

    async def record(self, qid: str, records: list[dict[str, Any]]) -> None:
        """Append recipient outcomes to the message's journal, durably."""
        if records:
            await asyncio.get_running_loop().run_in_executor(self._pool, self._record, qid, records)

    def _record(self, qid: str, records: list[dict[str, Any]]) -> None:
        lines = b"".join(
            json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
            for r in records
        )
        path = self.queue / f"{qid}.log"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            _write_all(fd, lines)
            os.fdatasync(fd)
        finally:
            os.close(fd)

    async def finish(self, qid: str) -> None:
        """A message whose every recipient is final: remove it, durably (the
        directory fsync, shared with other writers, is its record; cheaper
        than appending a journal line and then removing). In batches, as
        messages are stored."""
        await self._finishes.run(qid)

    def _finish(self, qids: list[str]) -> list[Exception | None]:
        errors: list[Exception | None] = []
        for qid in qids:
            try:
                self._remove(qid)
                errors.append(None)
            except OSError as exc:
                errors.append(exc)
        try:
            self._dirsync.sync()
        except OSError as exc:
            errors = [exc] * len(qids)
        return errors

    async def remove(self, qid: str) -> None:
        """Forget a finished message (journal last, so a crash leaves it replayable)."""
        await asyncio.get_running_loop().run_in_executor(self._pool, self._remove, qid)

    def _remove(self, qid: str) -> None:
        (self.queue / qid).unlink(missing_ok=True)
        (self.queue / f"{qid}.log").unlink(missing_ok=True)

    # -- reading -------------------------------------------------------------

    async def read_body(self, qid: str, size: int = 0) -> bytes:
        """The message's bytes. One of at most SYNC_READ_BYTES (`size`, from its
        envelope; 0 for unknown) is read on the caller's thread: just written, it is in the
        page cache, and a trip to an I/O thread would cost more than the read."""
        if size and size <= SYNC_READ_BYTES:
            return self._read_body(qid)
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._read_body, qid)

    def _read_body(self, qid: str) -> bytes:
        raw = (self.queue / qid).read_bytes()
        return raw[raw.index(b"\n") + 1 :]

    def recover(self) -> Iterator[SpooledMessage]:
        """Every message in the queue with its recipients' state replayed.

        Called once at start, before ingress opens. Debris in ``tmp/`` (never
        acknowledged) and journals without a message are removed.
        """
        for debris in self.tmp.iterdir():
            debris.unlink(missing_ok=True)
        for path in sorted(self.queue.iterdir()):
            if path.suffix == ".log":
                if not path.with_suffix("").exists():
                    path.unlink(missing_ok=True)
                continue
            try:
                yield self._load(path)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                # Keep the file for an operator, out of the way of delivery.
                bad = self.root / "corrupt"
                bad.mkdir(exist_ok=True)
                path.rename(bad / path.name)
                event("spool_corrupt", level=40, qid=path.name, error=str(exc))

    async def load(self, qid: str) -> SpooledMessage:
        """One queued message with its recipients' state (another process wrote it)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._load, self.queue / qid)

    def _load(self, path: Path) -> SpooledMessage:
        with path.open("rb") as fh:
            header = fh.readline()
        if not header.startswith(MAGIC):
            raise ValueError("not a spool file")
        envelope = Envelope.from_json(header[len(MAGIC) :])
        message = SpooledMessage(envelope, [RecipientState(r) for r in envelope.recipients])
        journal = path.with_name(f"{path.name}.log")
        if journal.exists():
            for line in journal.read_bytes().splitlines():
                try:
                    message.apply(json.loads(line))
                except (ValueError, KeyError, IndexError):
                    # A torn last line from a crash mid-append: that outcome was
                    # never confirmed, so the recipient is simply tried again.
                    continue
        return message
