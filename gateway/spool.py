"""The durable spool: the contract between ingress and delivery.

Layout under ``<data_dir>/spool``:

- ``segments/``: small messages (up to 256 KiB), many to an append-only file
  (`gateway/spool_segments.py`). Group commit: the messages that arrive while
  a batch is on its way to disk are appended together and synced once, so a
  batch costs one trip to an I/O thread and one ``fdatasync``. A finished
  message is listed in its segment's ``.done`` file; a segment is removed
  once all of its messages are.
- ``tmp/<qid>``: a file being written; anything here at start is debris
  from a crash before the 250 was sent, and is removed.
- ``queue/<qid>``: a message in a file of its own: a header line ``DGSPOOL1
  <json>\\n`` with the envelope, then the message bytes exactly as they will
  be sent. Large messages are stored so (written to ``tmp/``, fsynced, renamed,
  the directory fsynced), and so is a small one once it must wait for a
  retry, so that it does not keep its whole segment on disk.
- ``queue/<qid>.log``: the recipients' journal, JSON lines appended with
  fdatasync: each outcome (delivered, bounced, expired) and each deferral with
  its next-attempt time. Replaying it at start rebuilds every recipient's state,
  so a recipient recorded as delivered is never delivered again.

Ingress answers 250 only after the sync that covers its message. The process
that delivers (the queue manager) owns the spool's index: where each message
is, what is finished, which segments can go.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from gateway import _core, json_lines
from gateway.log import event
from gateway.spool_segments import (
    IDLE_SEAL_SECONDS,
    Append,
    Record,
    SegmentWriter,
    ends_sealed,
    read_done,
    record_bytes,
    scan,
    segment_files,
    segment_names,
    write_all,
    writer_alive,
)

MAGIC = b"DGSPOOL1 "
T = TypeVar("T")
Status = Literal["pending", "delivered", "bounced", "expired"]
FINAL: frozenset[str] = frozenset({"delivered", "bounced", "expired"})
SYNC_READ_BYTES = 256 * 1024
READ_FDS = 64  # segments kept open for reading on the loop's thread
BATCH_BYTES = 256 * 1024  # larger messages are stored on their own
# Finished messages wait this long for others to share their done-file sync:
# a trip to an I/O thread costs ~75 us of CPU on this project's VM, and no
# client waits for a finish (delivery does not: DeliveryEngine._complete).
FINISH_LINGER_SECONDS = 0.01
Location = tuple[str, int, int]  # segment, offset and length of the spooled form


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
        return json_lines.dumps(self.__dict__)

    @classmethod
    def from_json(cls, raw: bytes) -> Envelope:
        return cls(**json_lines.loads(raw))


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
    location: Location | None = None  # in a segment, else in a file of its own

    @classmethod
    def fresh(cls, envelope: Envelope, location: Location | None = None) -> SpooledMessage:
        """A message just stored: every recipient pending."""
        return cls(envelope, [RecipientState(r) for r in envelope.recipients], location)

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


# How a batch travels: carry(items, done) does the items' work somewhere and
# calls done(results) on the loop's thread, a result per item (an Exception
# for a failure).
Carrier = Callable[[list[Any], Callable[[list[Any]], None]], None]


class _Batches(Generic[T]):
    """Items carried in batches: while one batch is on its way, the items that
    arrive wait and go together in the next. Each trip wakes a thread and then
    the event loop, which costs more than the file operations of a small
    message; under load a batch costs what one item did."""

    def __init__(self, carry: Carrier, linger: float = 0.0) -> None:
        self._carry = carry
        self._linger = linger  # seconds the first item of a batch waits for more
        self._waiting: list[tuple[T, asyncio.Future[Any]]] = []
        self._busy = False  # a batch is on its way, or about to be sent

    async def run(self, item: T) -> Any:
        """Returns `item`'s result once it is done; raises its error. A
        cancelled caller's item is still done."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        self._waiting.append((item, done))
        if not self._busy:
            self._busy = True
            self._next(loop)
        return await done

    def _next(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._linger:
            loop.call_later(self._linger, self._send)
        else:
            loop.call_soon(self._send)  # what else arrives this turn goes too

    def _send(self) -> None:
        """In the loop: the waiting items on their way, if there are any."""
        batch, self._waiting = self._waiting, []
        if not batch:
            self._busy = False
            return
        try:
            self._carry([item for item, _ in batch], partial(self._finished, batch))
        except RuntimeError as exc:  # the I/O threads are gone (shutting down)
            self._finished(batch, [exc] * len(batch))

    def _finished(self, batch: list[tuple[T, Any]], results: list[Any]) -> None:
        for (_, done), result in zip(batch, results, strict=True):
            if done.done():
                continue  # its caller was cancelled; the item was done all the same
            if isinstance(result, Exception):
                done.set_exception(result)
            else:
                done.set_result(result)
        if self._linger and self._waiting:
            self._next(asyncio.get_running_loop())
        else:
            self._send()  # what arrived meanwhile


def on_pool(pool: ThreadPoolExecutor, work: Callable[[list[Any]], list[Any]]) -> Carrier:
    """A carrier that runs `work` on one of `pool`'s threads: a pool task that
    calls back into the loop (no asyncio future wrapped around it)."""

    def carry(items: list[Any], done: Callable[[list[Any]], None]) -> None:
        loop = asyncio.get_running_loop()

        def trip() -> None:
            results: list[Any]
            try:
                results = work(items)
            except Exception as exc:
                results = [exc] * len(items)
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(done, results)

        pool.submit(trip)

    return carry


class _SyncJobs:
    """Appends and syncs on `_core.SyncWriter`'s thread, which never takes the
    GIL (a Python thread did: 4-6 thread switches per batch, ~75 us of CPU
    here); their results come back through a socket the loop watches."""

    def __init__(self) -> None:
        self._writer: _core.SyncWriter | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._then: dict[int, Callable[[int], None]] = {}
        self._tickets = itertools.count()

    def submit(self, batch: Append, sync_dir: Path | None, then: Callable[[int], None]) -> None:
        """`batch` appended and synced (`sync_dir` first); then(errno), 0 for
        success, on the loop's thread."""
        if self._writer is None:
            self._writer = _core.SyncWriter()
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self._writer.fileno(), self._collect)
        ticket = next(self._tickets)
        self._then[ticket] = then
        directory = str(sync_dir) if sync_dir is not None else None
        self._writer.submit(ticket, str(batch.path), batch.data, directory)

    def _collect(self) -> None:
        assert self._writer is not None
        for ticket, error in self._writer.completed():
            self._then.pop(ticket)(error)

    def close(self) -> None:
        if self._writer is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._writer.fileno())
        self._writer.close()
        self._writer = None


def _pread_record(fd: int, sid: str, offset: int, length: int) -> bytes:
    raw = os.pread(fd, length, offset)
    if len(raw) != length:
        raise OSError(errno.EIO, f"segment {sid} ends before its record at {offset}")
    return raw


def _spool_error(qid: str, exc: OSError) -> SpoolError:
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return SpoolError(f"cannot store {qid}: {exc.strerror or exc}", full)


def _header(envelope: Envelope) -> bytes:
    return MAGIC + envelope.to_json() + b"\n"


def _parse(raw: bytes) -> Envelope:
    """The envelope of a spooled message (its header line, or the whole)."""
    if not raw.startswith(MAGIC):
        raise ValueError("not a spooled message")
    return Envelope.from_json(raw[len(MAGIC) : raw.index(b"\n")])


def _body_start(raw: bytes) -> int:
    """Where a spooled message's bytes start, after its header line."""
    return raw.index(b"\n") + 1


@dataclass
class _Segment:
    """What the owner knows of one segment."""

    sid: str
    live: dict[str, tuple[int, int]] = field(default_factory=dict)  # qid: offset, length
    done: set[str] = field(default_factory=set)
    sealed: bool = False  # no record will be added (sealed, or its writer is gone)


class Spool:
    def __init__(self, root: Path, io_threads: int = 8, owner: bool = True) -> None:
        """`owner`: this process delivers, so it indexes and removes what it
        stores (ingress workers only store; the queue manager owns)."""
        self.root = root
        self.tmp = root / "tmp"
        self.queue = root / "queue"
        self.segments = root / "segments"
        for directory in (self.tmp, self.queue, self.segments):
            directory.mkdir(parents=True, exist_ok=True)
        self._dirsync = _GroupSync(self.queue)
        self._segment_sync = _GroupSync(self.segments)
        self._writer = SegmentWriter(self.segments, track=owner)
        self._pool = ThreadPoolExecutor(io_threads, thread_name_prefix="spool")
        self._sync_jobs = _SyncJobs()
        self._stores: _Batches[tuple[Envelope, bytes] | None] = _Batches(
            self._carry_stores
        )  # group commit; None asks to seal an idle segment
        # Nobody waits for a finish but the outcome's log line: larger batches.
        self._finishes: _Batches[tuple[str, str | None]] = _Batches(
            on_pool(self._pool, self._finish), FINISH_LINGER_SECONDS
        )
        self._owner = owner
        self._segs: dict[str, _Segment] = {}
        self._where: dict[str, str] = {}  # qid: segment, for live messages in segments
        self._idle_check: asyncio.TimerHandle | None = None
        self._sealing: asyncio.Future[Any] | None = None
        self._relocating: dict[str, asyncio.Future[None]] = {}
        self._read_fds: dict[str, int] = {}  # segment: descriptor, for reading on the loop

    def close(self) -> None:
        if self._idle_check is not None:
            self._idle_check.cancel()
        for sid in list(self._read_fds):
            self._close_read_fd(sid)
        self._sync_jobs.close()
        self._pool.shutdown(wait=True)
        self._writer.seal()
        self._dirsync.close()
        self._segment_sync.close()

    # -- writing -------------------------------------------------------------

    def new_qid(self) -> str:
        return _core.new_queue_id()

    async def store(self, envelope: Envelope, data: bytes) -> Location | None:
        """Durably store a new message; returns only once it survives a crash,
        with where it is (None: in a file of its own).

        Small messages go by group commit into this process's segment
        (`_Batches`). A large one is written to a file on its own, so it
        holds up nobody."""
        if len(data) > BATCH_BYTES:
            await asyncio.get_running_loop().run_in_executor(
                self._pool, self._store, envelope, data
            )
            return None
        try:
            location: Location = await self._stores.run((envelope, data))
        except SpoolError:
            raise
        except Exception as exc:
            raise SpoolError(f"cannot store {envelope.qid}: {exc}") from exc
        if self._owner:
            self.adopt(envelope.qid, location)
        if self._idle_check is None:
            self._idle_check = asyncio.get_running_loop().call_later(
                IDLE_SEAL_SECONDS, self._seal_if_idle
            )
        return location

    def _seal_if_idle(self) -> None:
        self._idle_check = None
        self._sealing = asyncio.ensure_future(self._seal_when_idle())

    async def _seal_when_idle(self) -> None:
        # Through the store batches, so a seal never cuts into a write.
        if await self._stores.run(None) and self._idle_check is None:
            loop = asyncio.get_running_loop()  # still in use: look again later
            self._idle_check = loop.call_later(IDLE_SEAL_SECONDS, self._seal_if_idle)

    def _carry_stores(
        self, batch: list[tuple[Envelope, bytes] | None], done: Callable[[list[Any]], None]
    ) -> None:
        """A store batch placed in the segment here, appended and synced on the
        sync writer's thread. A None item asks to seal an idle segment: its
        result, whether the segment is still open after."""
        items = [(i, item) for i, item in enumerate(batch) if item is not None]
        if not items:
            if time.monotonic() - self._writer.last_write >= IDLE_SEAL_SECONDS:
                self._writer.seal()
            done([self._writer.is_open] * len(batch))
            return
        payloads = [_header(envelope) + data for _, (envelope, data) in items]
        records = [
            record_bytes(envelope.qid, payload)
            for (_, (envelope, _)), payload in zip(items, payloads, strict=True)
        ]
        results: list[Any] = [True] * len(batch)
        try:
            placed = self._writer.prepare(items[0][1][0].qid, records)
        except OSError as exc:
            done(self._store_errors(results, items, exc))
            return
        sid = self._writer.sid

        def written(error: int) -> None:
            if error:
                self._writer.failed(placed)
                done(self._store_errors(results, items, OSError(error, os.strerror(error))))
                return
            self._writer.committed(placed)
            for (i, _), offset, record, payload in zip(
                items, placed.offsets, records, payloads, strict=True
            ):
                results[i] = (sid, offset + len(record) - len(payload), len(payload))
            done(results)

        self._sync_jobs.submit(placed, self.segments if placed.new_segment else None, written)

    @staticmethod
    def _store_errors(
        results: list[Any], items: list[tuple[int, tuple[Envelope, bytes]]], exc: OSError
    ) -> list[Any]:
        for i, (envelope, _) in items:
            results[i] = _spool_error(envelope.qid, exc)
        return results

    def _store(self, envelope: Envelope, data: bytes) -> None:
        self._write(envelope.qid, _header(envelope), data)
        try:
            self._dirsync.sync()
        except OSError as exc:
            # Not durable, so not acknowledged: nor kept, else the client's
            # retry would make it a duplicate.
            with contextlib.suppress(OSError):
                (self.queue / envelope.qid).unlink()
            raise _spool_error(envelope.qid, exc) from exc

    def _write(self, qid: str, header: bytes, data: bytes) -> None:
        """Written, fsynced and renamed into the queue (the rename not yet durable)."""
        tmp_path = self.tmp / qid
        try:
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                write_all(fd, header)
                write_all(fd, data)
                os.fdatasync(fd)
            finally:
                os.close(fd)
            os.rename(tmp_path, self.queue / qid)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp_path.unlink(missing_ok=True)
            raise _spool_error(qid, exc) from exc

    def free_space(self) -> int:
        """Bytes an unprivileged writer can still use on the spool's filesystem."""
        stats = os.statvfs(self.queue)
        return stats.f_bavail * stats.f_frsize

    # -- the owner's index ------------------------------------------------------

    def adopt(self, qid: str, location: Location) -> bool:
        """Index a message another process stored in a segment; False if it is
        already known (found by `collect`, or finished)."""
        sid, offset, length = location
        seg = self._segs.get(sid)
        if seg is None:
            if not (self.segments / f"{sid}.seg").exists():
                return False  # collected already: every message in it was done
            seg = self._segs[sid] = _Segment(sid)
        if qid in seg.live or qid in seg.done:
            return False
        seg.live[qid] = (offset, length)
        self._where[qid] = sid
        return True

    def _mark_done(self, qid: str, sid: str) -> None:
        seg = self._segs[sid]
        seg.live.pop(qid, None)
        seg.done.add(qid)
        self._where.pop(qid, None)

    def _append_done(self, sid: str, qids: list[str]) -> None:
        path = self.segments / f"{sid}.done"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            new = os.fstat(fd).st_size == 0
            write_all(fd, "".join(f"{qid}\n" for qid in qids).encode())
            os.fdatasync(fd)
        finally:
            os.close(fd)
        if new:
            self._segment_sync.sync()

    # -- journal and removal ----------------------------------------------------

    async def record(self, qid: str, records: list[dict[str, Any]]) -> None:
        """Append recipient outcomes to the message's journal, durably. A
        message still in a segment first moves to a file of its own: it waits
        for a retry, and its segment need not wait with it."""
        if not records:
            return
        await self._in_own_file(qid)
        await asyncio.get_running_loop().run_in_executor(self._pool, self._record, qid, records)

    async def _in_own_file(self, qid: str) -> None:
        """Move a message out of its segment, once: outcomes for its several
        destinations may be recorded at the same time."""
        moving = self._relocating.get(qid)
        if moving is not None:
            await asyncio.shield(moving)
            return
        sid = self._where.get(qid)
        if sid is None:
            return
        offset, length = self._segs[sid].live[qid]
        loop = asyncio.get_running_loop()
        moving = loop.run_in_executor(self._pool, self._relocate, qid, sid, offset, length)
        self._relocating[qid] = moving
        try:
            await asyncio.shield(moving)
        finally:
            self._relocating.pop(qid, None)
        self._mark_done(qid, sid)

    def _relocate(self, qid: str, sid: str, offset: int, length: int) -> None:
        raw = self._pread(sid, offset, length)
        start = _body_start(raw)
        self._write(qid, raw[:start], raw[start:])
        self._dirsync.sync()
        self._append_done(sid, [qid])  # after a crash before this, the file wins

    def _record(self, qid: str, records: list[dict[str, Any]]) -> None:
        lines = b"".join(json_lines.dumps_line(r) for r in records)
        path = self.queue / f"{qid}.log"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            write_all(fd, lines)
            os.fdatasync(fd)
        finally:
            os.close(fd)

    async def finish(self, qid: str) -> None:
        """A message whose every recipient is final: remove it, durably (its
        removal records every outcome at once; cheaper than a journal line).
        In batches, as messages are stored: a segment's finished messages are
        appended to its done file with one sync, and files of their own are
        unlinked under one directory fsync."""
        if qid in self._relocating:
            await self._in_own_file(qid)
        sid = self._where.get(qid)
        await self._finishes.run((qid, sid))
        if sid is not None:
            self._mark_done(qid, sid)

    async def remove(self, qid: str) -> None:
        """Forget a message (an operator deleted it; found finished at start)."""
        if qid in self._where:
            await self.finish(qid)
        else:
            await asyncio.get_running_loop().run_in_executor(self._pool, self._remove, qid)

    def _finish(self, items: list[tuple[str, str | None]]) -> list[Exception | None]:
        errors: list[Exception | None] = [None] * len(items)
        by_segment: dict[str, list[int]] = {}
        files = []
        for i, (_, sid) in enumerate(items):
            if sid is None:
                files.append(i)
            else:
                by_segment.setdefault(sid, []).append(i)
        for i in files:
            try:
                self._remove(items[i][0])
            except OSError as exc:
                errors[i] = exc
        if files:
            try:
                self._dirsync.sync()
            except OSError as exc:
                for i in files:
                    errors[i] = exc
        for sid, indices in by_segment.items():
            try:
                self._append_done(sid, [items[i][0] for i in indices])
            except OSError as exc:
                for i in indices:
                    errors[i] = exc
        return errors

    def _remove(self, qid: str) -> None:
        (self.queue / qid).unlink(missing_ok=True)
        (self.queue / f"{qid}.log").unlink(missing_ok=True)

    async def collect(self) -> list[SpooledMessage]:
        """The owner's housekeeping, every second: remove segments whose
        every message is done and that no writer will add to; return the
        messages found in such a segment that no notice announced (a worker
        that died between its sync and its notice), now indexed."""
        loop = asyncio.get_running_loop()
        on_disk = await loop.run_in_executor(self._pool, segment_names, self.segments)
        for sid in on_disk:  # one whose notices were all lost is known by its file
            if sid not in self._segs:
                self._segs[sid] = _Segment(sid)
        candidates = [seg for seg in self._segs.values() if not seg.live]
        if not candidates:
            return []
        removed, found = await loop.run_in_executor(self._pool, self._collect, candidates)
        for sid in removed:
            self._segs.pop(sid, None)
            self._writer.opened.discard(sid)
            self._close_read_fd(sid)
        return [m for m in found if m.location and self.adopt(m.qid, m.location)]

    def _collect(self, segments: list[_Segment]) -> tuple[list[str], list[SpooledMessage]]:
        removed: list[str] = []
        found: list[SpooledMessage] = []
        for seg in segments:
            path = self.segments / f"{seg.sid}.seg"
            try:
                writer_gone = not seg.sealed and not writer_alive(seg.sid)
                if not (seg.sealed or writer_gone or ends_sealed(path)):
                    continue  # still being written: not read at all
                contents = scan(path, verify=False)
            except FileNotFoundError:
                removed.append(seg.sid)
                continue
            # The seal counts only where the records end: a message's last
            # bytes may look like one.
            seg.sealed = seg.sealed or writer_gone or contents.sealed
            if not seg.sealed:
                continue
            unknown = [r for r in contents.records if r.qid not in seg.done]
            if unknown:
                if seg.sid not in self._writer.opened:  # ours are indexed as stored
                    found += self._readable(seg, unknown)
                continue
            self._remove_segment(seg.sid)
            removed.append(seg.sid)
        return removed, found

    def _remove_segment(self, sid: str) -> None:
        # The segment before its done file, durably: never a segment without it.
        (self.segments / f"{sid}.seg").unlink(missing_ok=True)
        self._segment_sync.sync()
        (self.segments / f"{sid}.done").unlink(missing_ok=True)

    # -- reading -------------------------------------------------------------

    async def read_body(self, qid: str, size: int = 0) -> bytes:
        """The message's bytes. One of at most SYNC_READ_BYTES (`size`, from its
        envelope; 0 for unknown) is read on the caller's thread: just written, it is in the
        page cache, and a trip to an I/O thread would cost more than the read."""
        sid = self._where.get(qid)
        if sid is not None:
            offset, length = self._segs[sid].live[qid]
            if length <= SYNC_READ_BYTES:
                raw = self._pread_cached(sid, offset, length)
            else:
                loop = asyncio.get_running_loop()
                raw = await loop.run_in_executor(self._pool, self._pread, sid, offset, length)
            return raw[_body_start(raw) :]
        if size and size <= SYNC_READ_BYTES:
            return self._read_body(qid)
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._read_body, qid)

    def _pread(self, sid: str, offset: int, length: int) -> bytes:
        fd = os.open(self.segments / f"{sid}.seg", os.O_RDONLY)
        try:
            return _pread_record(fd, sid, offset, length)
        finally:
            os.close(fd)

    def _pread_cached(self, sid: str, offset: int, length: int) -> bytes:
        """_pread on the loop's thread with the segment kept open: messages
        are read one after another from the few segments being written."""
        fd = self._read_fds.get(sid)
        if fd is None:
            if len(self._read_fds) >= READ_FDS:
                self._close_read_fd(next(iter(self._read_fds)))
            fd = self._read_fds[sid] = os.open(self.segments / f"{sid}.seg", os.O_RDONLY)
        return _pread_record(fd, sid, offset, length)

    def _close_read_fd(self, sid: str) -> None:
        fd = self._read_fds.pop(sid, None)
        if fd is not None:
            os.close(fd)

    def _read_body(self, qid: str) -> bytes:
        raw = (self.queue / qid).read_bytes()
        return raw[_body_start(raw) :]

    def recover(self) -> Iterator[SpooledMessage]:
        """Every message in the spool with its recipients' state replayed.

        Called once at start, before ingress opens, by the owner: every
        segment's writer is gone, so each counts as sealed. Debris in ``tmp/``
        (never acknowledged), journals without a message and segments without
        a live message are removed."""
        for debris in self.tmp.iterdir():
            debris.unlink(missing_ok=True)
        in_files: set[str] = set()
        for path in sorted(self.queue.iterdir()):
            if path.suffix == ".log":
                continue
            try:
                message = self._load(path)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                self._set_aside(path, exc)
                continue
            in_files.add(message.qid)
            yield message
        yield from self._recover_segments(in_files)
        for path in self.queue.glob("*.log"):
            qid = path.name.removesuffix(".log")
            if qid not in in_files and qid not in self._where:
                path.unlink(missing_ok=True)

    def _recover_segments(self, in_files: set[str]) -> Iterator[SpooledMessage]:
        for done_path in self.segments.glob("*.done"):
            if not done_path.with_suffix(".seg").exists():
                done_path.unlink(missing_ok=True)
        for path in segment_files(self.segments):
            sid = path.stem
            try:
                contents = scan(path)
            except OSError as exc:
                self._set_aside(path, exc)
                continue
            if contents.torn:  # never acknowledged: the sync that would have covered it
                event("spool_torn_segment", segment=sid, at=contents.end, size=contents.size)
            seg = self._segs[sid] = _Segment(sid, done=read_done(path.with_suffix(".done")))
            seg.sealed = True
            for record in contents.damaged:
                if record.qid not in seg.done:
                    self._set_aside_record(sid, record, "CRC mismatch")
                    seg.done.add(record.qid)  # (collect reads without checking CRCs)
            seg.done |= in_files  # moved to a file of its own: the file wins
            unknown = [r for r in contents.records if r.qid not in seg.done]
            for message in self._readable(seg, unknown):
                assert message.location is not None
                self._replay(message, self.queue / f"{message.qid}.log")
                seg.live[message.qid] = message.location[1:]
                self._where[message.qid] = sid
                yield message
            if not seg.live:
                self._remove_segment(sid)
                del self._segs[sid]

    def _readable(self, seg: _Segment, records: list[Record]) -> list[SpooledMessage]:
        """The messages of `records`; one whose envelope cannot be read is set
        aside for an operator (in ``corrupt/``) and counts as done."""
        out = []
        for record in records:
            try:
                envelope = _parse(record.head)
            except (ValueError, KeyError, TypeError) as exc:
                self._set_aside_record(seg.sid, record, str(exc))
                seg.done.add(record.qid)
                continue
            out.append(SpooledMessage.fresh(envelope, (seg.sid, record.offset, record.length)))
        return out

    def _corrupt(self) -> Path:
        """Where unreadable messages are kept for an operator, out of delivery's way."""
        bad = self.root / "corrupt"
        bad.mkdir(exist_ok=True)
        return bad

    def _set_aside_record(self, sid: str, record: Record, error: str) -> None:
        # A copy: the segment goes once its other messages are done.
        raw = self._pread(sid, record.offset, record.length)
        (self._corrupt() / record.qid).write_bytes(raw)
        event("spool_corrupt", level=40, qid=record.qid, segment=sid, error=error)

    def _set_aside(self, path: Path, exc: Exception) -> None:
        path.rename(self._corrupt() / path.name)
        event("spool_corrupt", level=40, qid=path.name, error=str(exc))

    def _load(self, path: Path) -> SpooledMessage:
        with path.open("rb") as fh:
            header = fh.readline()
        envelope = _parse(header)
        message = SpooledMessage.fresh(envelope)
        self._replay(message, path.with_name(f"{path.name}.log"))
        return message

    def _replay(self, message: SpooledMessage, journal: Path) -> None:
        if not journal.exists():
            return
        for line in journal.read_bytes().splitlines():
            try:
                message.apply(json_lines.loads(line))
            except (ValueError, KeyError, IndexError):
                # A torn last line from a crash mid-append: that outcome was
                # never confirmed, so the recipient is simply tried again.
                continue


def stored_qids(root: Path) -> list[str]:
    """Queue IDs of the messages in the spool at `root`, as a fresh start
    would find them (for tests and tools; reads the disk)."""
    queue, segments = root / "queue", root / "segments"
    live = {p.name for p in queue.iterdir() if p.suffix != ".log"} if queue.exists() else set()
    if segments.exists():
        for path in segment_files(segments):
            done = read_done(path.with_suffix(".done"))
            live.update(r.qid for r in scan(path, verify=False).records if r.qid not in done)
    return sorted(live)
