"""Spool segments: many small messages in one append-only file.

Why: on this kind of disk an `fdatasync` of a new 2 KB file (with its create,
rename and, later, unlink) costs ~0.3 ms of machine CPU, while appending a
batch of twenty messages to one file and syncing it once costs ~7 µs a
message (`benchmarks/spool_sync.py`). A message's durability is the same:
acknowledged only after the `fdatasync` of the batch that holds it.

A segment, ``<data_dir>/spool/segments/<first qid>-<writer pid>.seg``, is
written by one process only, as a sequence of records::

    DGREC <qid> <length> <crc32 hex>\\n<payload of length bytes>

The payload is a message exactly as a spool file holds it (``DGSPOOL1
<envelope json>\\n`` then its bytes). The writer ends a segment with
``DGSEAL\\n`` when it moves to the next one (the current one is big or old
enough, or the writer has been idle), so a reader knows no record will
follow. A torn record at the end (a crash mid-write) is never acknowledged
and is ignored, with anything after it; a whole record that fails its CRC
is set aside (``spool/corrupt/``) and the records after it are read on.

Finished messages are listed in ``<sid>.done``, one queue ID per line, by the
process that delivers (appended and synced per batch). A sealed segment
whose every record is done is removed.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

RECORD = b"DGREC "
SEAL = b"DGSEAL\n"
MAX_HEADER = 128
SEGMENT_BYTES = 4 * 1024 * 1024  # a writer moves to a new segment past this size
SEGMENT_SECONDS = 10.0  # or after this long, so finished ones can be removed
IDLE_SEAL_SECONDS = 2.0  # a writer with nothing to write seals its segment


def record_bytes(qid: str, payload: bytes) -> bytes:
    header = b"%s%s %d %08x\n" % (RECORD, qid.encode(), len(payload), zlib.crc32(payload))
    return header + payload


@dataclass
class Record:
    qid: str
    offset: int  # of the payload in the segment
    length: int
    head: bytes  # the payload's first line: DGSPOOL1 and the envelope


@dataclass
class Scan:
    records: list[Record] = field(default_factory=list)
    sealed: bool = False
    end: int = 0  # bytes read up to the last good record (or the seal)
    size: int = 0  # the file's size
    damaged: list[Record] = field(default_factory=list)  # whole, but failing their CRC

    @property
    def torn(self) -> bool:
        """Bytes after the last good record that are not a seal."""
        return self.end < self.size


def scan(path: Path, verify: bool = True) -> Scan:
    """The complete records of a segment, whether it is sealed, and where a
    torn or damaged tail starts. Read record by record, so memory stays at
    one record, not the segment (a whole 4 MiB read, freed by one thread
    pool thread and reused by another, kept RSS at a high-water mark per
    thread). With `verify` each payload's CRC is checked (at recovery);
    without, payloads are skipped (the owner's look at a sealed segment
    whose records it acknowledged)."""
    out = Scan()
    with path.open("rb") as fh:
        out.size = fh.seek(0, os.SEEK_END)
        fh.seek(0)
        pos = 0
        while pos < out.size:
            header = fh.readline(MAX_HEADER)
            if header == SEAL:
                out.sealed = True
                pos += len(SEAL)
                break
            if not header.startswith(RECORD) or not header.endswith(b"\n"):
                break
            try:
                qid_b, length_b, crc_b = header[len(RECORD) : -1].split(b" ")
                length, crc = int(length_b), int(crc_b, 16)
            except ValueError:
                break
            start = pos + len(header)
            if start + length > out.size:
                break
            if verify:
                payload = fh.read(length)
                head = payload[: payload.find(b"\n") + 1]
                intact = zlib.crc32(payload) == crc  # damaged in place: the next may be fine
            else:
                head = fh.readline(length)
                fh.seek(start + length)
                intact = True
            record = Record(qid_b.decode(), start, length, head)
            (out.records if intact else out.damaged).append(record)
            pos = start + length
    out.end = pos
    return out


def ends_sealed(path: Path) -> bool:
    """Whether the file's last bytes are a seal: the cheap look before `scan`."""
    with path.open("rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size < len(SEAL):
            return False
        fh.seek(size - len(SEAL))
        return fh.read() == SEAL


def read_done(path: Path) -> set[str]:
    """Queue IDs listed in a segment's done file (a torn last line is a prefix
    of no queue ID and matches nothing)."""
    try:
        return set(path.read_bytes().decode("ascii", "replace").split())
    except FileNotFoundError:
        return set()


def writer_alive(sid: str) -> bool:
    """Whether the process that writes segment `sid` may still append to it."""
    try:
        pid = int(sid.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # there, under another user
        pass
    return True


@dataclass
class Append:
    """A batch of records placed in a segment, to be written and synced."""

    path: Path  # the segment
    data: bytes
    start: int  # where the batch starts in the segment
    offsets: list[int]  # of each record
    new_segment: bool  # its first batch: the directory must be synced too

    @property
    def end(self) -> int:
        return self.start + len(self.data)


def segment_files(directory: Path) -> Iterator[Path]:
    return (p for p in sorted(directory.iterdir()) if p.suffix == ".seg")


def segment_names(directory: Path) -> list[str]:
    return [p.stem for p in segment_files(directory)]


class SegmentWriter:
    """This process's current segment. Batches are placed one after another
    (`prepare`, then `committed` or `failed`), on the loop's thread; the
    spool's sync writer writes and syncs them (with the directory, for a new
    segment's first batch)."""

    def __init__(self, directory: Path, track: bool = True) -> None:
        self._dir = directory
        self._fd: int | None = None
        self.sid = ""
        self._path = directory  # the current segment's, once one is open
        self._size = 0
        self._opened = 0.0
        self.last_write = 0.0
        self._track = track
        self.opened: set[str] = set()  # with `track`: made here (the owner drops removed ones)

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def prepare(self, first_qid: str, records: list[bytes]) -> Append:
        """`records` placed at the end of the segment (a new one when the
        current one is full or old), for the caller to write and sync, then
        to report `committed` or `failed`; one batch at a time."""
        now = time.monotonic()
        if self._fd is not None and (
            self._size >= SEGMENT_BYTES or now - self._opened >= SEGMENT_SECONDS
        ):
            self.seal()
        new_segment = self._fd is None
        if new_segment:
            self._open(first_qid, now)
        offsets = []
        pos = self._size
        for record in records:
            offsets.append(pos)
            pos += len(record)
        return Append(self._path, b"".join(records), self._size, offsets, new_segment)

    def committed(self, batch: Append) -> None:
        self._size = batch.end
        self.last_write = time.monotonic()

    def failed(self, batch: Append) -> None:
        """Cut what the batch left, so no torn record precedes later ones,
        and stop writing to this segment."""
        if self._fd is not None:
            self._abandon(batch.start)

    def _open(self, first_qid: str, now: float) -> None:
        """A new segment; its directory entry is synced with its first batch
        (`Append.new_segment`), before that batch counts as stored."""
        sid = f"{first_qid}-{os.getpid()}"
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL  # after a cut, at its end
        path = self._dir / f"{sid}.seg"
        self._fd = os.open(path, flags, 0o600)
        self.sid, self._path, self._size, self._opened = sid, path, 0, now
        if self._track:
            self.opened.add(sid)

    def seal(self) -> None:
        """No record will follow: readers may act on the segment as a whole.
        Not synced: after a crash every segment counts as sealed."""
        if self._fd is None:
            return
        try:
            write_all(self._fd, SEAL)
        except OSError:
            pass  # left unsealed: its records are recovered at the next start
        finally:
            os.close(self._fd)
            self._fd = None

    def _abandon(self, start: int) -> None:
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, start)
        except OSError:  # garbage stays at the end: unsealed, recovered at start
            os.close(self._fd)
            self._fd = None
            return
        self.seal()


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
