"""The accounting log: one JSON line per thing that happened to a message.

What PowerMTA's accounting files are to its users: the record to bill, audit
and reconcile from, apart from the operational log. Types: `received`,
`delivered`, `transient` (a deferral), `bounced`, `expired`, `remote_bounce`
(a bounce that came back later), `feedback` (a complaint), `rejected`
(refused at SMTP time), `admin` (an operator's action). The fields are in
docs/accounting.md.

Files rotate by size and by age: the current file is `accounting.jsonl`;
rotated ones are `accounting-YYYYmmddTHHMMSS.jsonl`, the oldest deleted past
`keep`. Lines are flushed at once (a crash loses none already written).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from gateway import json_lines
from gateway.config import AccountingConfig

if TYPE_CHECKING:
    from gateway.spool import Envelope

CURRENT = "accounting.jsonl"
# Lines are flushed to the file this long after the first unflushed one (in
# the event loop; at once elsewhere): one write for a burst, not one per line.
FLUSH_SECONDS = 0.2


class AccountingLog:
    def __init__(self, config: AccountingConfig, directory: Path) -> None:
        self._config = config
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = None
        self._opened = 0.0
        self._size = 0
        self._flush_pending = False
        self._open()

    def _open(self) -> None:
        path = self._dir / CURRENT
        self._file = path.open("ab")
        self._size = path.stat().st_size
        self._opened = path.stat().st_ctime if self._size else time.time()

    def _rotate_if_due(self, now: float) -> None:
        assert self._file is not None
        size = self._size
        too_big = size >= self._config.rotate_bytes
        too_old = size > 0 and now - self._opened >= self._config.rotate_interval
        if not (too_big or too_old):
            return
        self._file.close()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
        target = self._dir / f"accounting-{stamp}.jsonl"
        n = 1
        while target.exists():
            target = self._dir / f"accounting-{stamp}-{n}.jsonl"
            n += 1
        (self._dir / CURRENT).rename(target)
        rotated = sorted(self._dir.glob("accounting-*.jsonl"))
        for old in rotated[: max(0, len(rotated) - self._config.keep)]:
            old.unlink(missing_ok=True)
        self._open()

    def write(self, kind: str, fields: dict[str, Any]) -> None:
        now = time.time()
        record = {"type": kind, "time_logged": round(now, 3), **fields}
        line = json_lines.dumps_line(record)
        with self._lock:
            self._rotate_if_due(now)
            assert self._file is not None
            self._file.write(line)
            self._size += len(line)
            if not self._flush_pending:
                try:
                    asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)
                    self._flush_pending = True
                except RuntimeError:  # not in the event loop: write through
                    self._file.flush()

    def flush(self) -> None:
        with self._lock:
            self._flush_pending = False
            if self._file is not None:
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


_log: AccountingLog | None = None
# In an ingress worker, records go to the queue manager, which writes the one log.
_forward: Callable[[str, dict[str, Any]], None] | None = None


def open_accounting(config: AccountingConfig, data_dir: Path) -> AccountingLog | None:
    """Start writing accounting records (the module-level `account` uses it)."""
    global _log
    if not config.enabled:
        return None
    _log = AccountingLog(config, config.directory or data_dir / "accounting")
    return _log


def forward_accounting(send: Callable[[str, dict[str, Any]], None] | None) -> None:
    """Hand records to `send` instead of writing them (ingress workers)."""
    global _forward
    _forward = send


def close_accounting() -> None:
    global _log
    if _log is not None:
        _log.close()
        _log = None


def account(kind: str, **fields: Any) -> None:
    """One accounting record (nothing when accounting is off)."""
    if _forward is not None:
        _forward(kind, fields)
        return
    if _log is None:
        return
    try:
        _log.write(kind, fields)
    except OSError as exc:  # a full disk must not stop delivery; the event log says so
        logging.getLogger("gateway").error("accounting write failed: %s", exc)


def account_received(envelope: Envelope, dkim: list[str]) -> None:
    """The `received` record of a message just spooled (`dkim`: the
    signatures added). Written by the process that schedules it, from the
    envelope: a worker's notice carries it, so it is not sent twice."""
    account(
        "received",
        qid=envelope.qid,
        time_queued=round(envelope.received_at, 3),
        sender=envelope.sender,
        recipients=envelope.recipients,
        client_ip=envelope.client_ip,
        helo=envelope.helo,
        size=envelope.size,
        message_id=envelope.message_id,
        tenant=envelope.tenant,
        campaign=envelope.campaign,
        stream=envelope.stream,
        dkim=dkim,
    )
