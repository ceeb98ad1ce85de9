"""The embedded policy store: one SQLite file, with a memory copy for reads.

SQLite (in the standard library) in WAL mode with `synchronous=FULL`: a
write is on disk when its transaction commits, and readers in other
processes (the CLI) never block the gateway. Writes run on one dedicated
thread, so the event loop never waits on a commit. Each namespace is loaded
into memory on first use; writes update it after they commit.

Other processes write too (ingress workers, the CLI's imports). Every write
also appends the keys it changed to a `changes` table in the same
transaction; every second at most, a read checks `PRAGMA data_version`
(which changes when another connection committed) and, if it did, re-reads
just the keys changed since the last look, so a worker holding a million
suppressions does not reload them because the manager counted a delivery.
A namespace with very many changes, or changes this process missed (the
table keeps the last 100,000), is reloaded whole instead.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from gateway.store import Entry, MirroredStore, Record

T = TypeVar("T")

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS records (
        namespace TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        expires_at REAL,
        PRIMARY KEY (namespace, key)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        namespace TEXT NOT NULL,
        key TEXT NOT NULL
    )""",
]

UPSERT = (
    "INSERT INTO records (namespace, key, value, expires_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (namespace, key) DO UPDATE SET "
    "value = excluded.value, expires_at = excluded.expires_at"
)

# How often reads look for other processes' writes.
EXTERNAL_CHECK_SECONDS = 1.0
# How often a write also deletes expired records (and old change rows).
PURGE_SECONDS = 60.0
CHANGES_KEPT = 100_000  # change rows kept for other processes to catch up
RELOAD_OVER = 5_000  # more changed keys than this in a namespace: reload it whole


def _current(conn: sqlite3.Connection, namespace: str, key: str) -> Record:
    """A record as it stands in the database (empty if absent or expired)."""
    row = conn.execute(
        "SELECT value, expires_at FROM records WHERE namespace = ? AND key = ?", (namespace, key)
    ).fetchone()
    if row is None or (row[1] is not None and row[1] <= time.time()):
        return {}
    record: Record = json.loads(row[0])
    return record


def _upsert(
    conn: sqlite3.Connection, namespace: str, key: str, record: Record, expires: float | None
) -> None:
    conn.execute(UPSERT, (namespace, key, json.dumps(record, sort_keys=True), expires))


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=5000")
    for statement in SCHEMA:
        conn.execute(statement)
    return conn


class SqliteStore(MirroredStore):
    def __init__(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._path = str(path)
        self._conn = _connect(self._path)
        self._lock = threading.Lock()  # one connection, used by the writer and by loads
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy-store")
        self._memory: dict[str, dict[str, Entry]] = {}
        self._data_version = self._version()
        self._seq = self._last_change()  # changes up to here are in what we load
        self._checked = time.monotonic()
        self._purged = time.time()

    # -- reads (memory) --------------------------------------------------------

    def _version(self) -> int:
        with self._lock:
            return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def _last_change(self) -> int:
        return int(self._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0])

    def _namespace(self, namespace: str) -> dict[str, Entry]:
        now = time.monotonic()
        if now - self._checked >= EXTERNAL_CHECK_SECONDS:
            self._checked = now
            version = self._version()
            if version != self._data_version:  # another process wrote
                self._data_version = version
                self._catch_up()
        loaded = self._memory.get(namespace)
        if loaded is None:
            with self._lock:
                rows = self._conn.execute(
                    "SELECT key, value, expires_at FROM records WHERE namespace = ?",
                    (namespace,),
                ).fetchall()
            loaded = self._memory[namespace] = {k: (json.loads(v), e) for k, v, e in rows}
        return loaded

    def _catch_up(self) -> None:
        """Bring the namespaces in memory up to date with other processes' writes."""
        with self._lock:
            oldest = self._conn.execute("SELECT MIN(seq) FROM changes").fetchone()[0]
            rows = self._conn.execute(
                "SELECT seq, namespace, key FROM changes WHERE seq > ?", (self._seq,)
            ).fetchall()
            if oldest is not None and oldest > self._seq + 1:
                self._memory.clear()  # rows we never read were purged: start again
            changed: dict[str, set[str]] = {}
            for seq, namespace, key in rows:
                self._seq = max(self._seq, seq)
                changed.setdefault(namespace, set()).add(key)
            for namespace, keys in changed.items():
                memory = self._memory.get(namespace)
                if memory is None:
                    continue
                if len(keys) > RELOAD_OVER:
                    del self._memory[namespace]  # loaded whole on the next read
                    continue
                for key in keys:
                    row = self._conn.execute(
                        "SELECT value, expires_at FROM records WHERE namespace = ? AND key = ?",
                        (namespace, key),
                    ).fetchone()
                    if row is None:
                        memory.pop(key, None)
                    else:
                        memory[key] = (json.loads(row[0]), row[1])

    def _fetch(self, namespace: str, key: str) -> Entry | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT value, expires_at FROM records WHERE namespace = ? AND key = ?",
                (namespace, key),
            ).fetchone()
        return (json.loads(row[0]), row[1]) if row else None

    def _fetch_prefix(self, namespace: str, prefix: str) -> Iterator[tuple[str, Entry]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT key, value, expires_at FROM records WHERE namespace = ? "
                "AND key >= ? AND key < ?",
                (namespace, prefix, prefix + "\U0010ffff"),
            ).fetchall()
        for key, value, expires in rows:
            yield key, (json.loads(value), expires)

    # -- writes (durable, then memory) ----------------------------------------

    def _transaction(
        self, work: Callable[[sqlite3.Connection], T], namespace: str, keys: Sequence[str]
    ) -> T:
        """`work` in one write transaction (on the writer thread), with its
        changed `keys` recorded for other processes."""
        with self._lock:
            # No one else wrote since our last look: then every change up to
            # ours is known here, and our own commit is no reason to catch up.
            known = self._conn.execute("PRAGMA data_version").fetchone()[0] == self._data_version
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(self._conn)
                if namespace not in self._cold:  # never held in memory anywhere
                    self._conn.executemany(
                        "INSERT INTO changes (namespace, key) VALUES (?, ?)",
                        [(namespace, key) for key in keys],
                    )
                now = time.time()
                if now - self._purged >= PURGE_SECONDS:  # expired rows go, now and then
                    self._purged = now
                    self._conn.execute(
                        "DELETE FROM records WHERE expires_at IS NOT NULL AND expires_at < ?",
                        (now,),
                    )
                    self._conn.execute(
                        "DELETE FROM changes WHERE seq <= (SELECT MAX(seq) FROM changes) - ?",
                        (CHANGES_KEPT,),
                    )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            if known:
                self._data_version = int(self._conn.execute("PRAGMA data_version").fetchone()[0])
                self._seq = self._last_change()
            return result

    async def _run_transaction(
        self, work: Callable[[sqlite3.Connection], T], namespace: str, keys: Sequence[str]
    ) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, self._transaction, work, namespace, keys)

    async def _run(
        self, sql: str, rows: list[tuple[Any, ...]], namespace: str, keys: Sequence[str]
    ) -> int:
        def write(conn: sqlite3.Connection) -> int:
            return sum(conn.execute(sql, row).rowcount for row in rows)

        return await self._run_transaction(write, namespace, keys)

    def _remember(
        self, namespace: str, entries: Iterable[tuple[str, Mapping[str, Any], float | None]]
    ) -> None:
        memory = self._held(namespace)
        if memory is not None:
            for key, record, expires in entries:
                memory[key] = (dict(record), expires)

    async def put_many(
        self, namespace: str, items: Sequence[tuple[str, Mapping[str, Any], float | None]]
    ) -> None:
        rows = [(namespace, k, json.dumps(r, sort_keys=True), e) for k, r, e in items]
        await self._run(UPSERT, rows, namespace, [k for k, _, _ in items])
        self._remember(namespace, items)

    async def delete_many(self, namespace: str, keys: Sequence[str]) -> int:
        changed = await self._run(
            "DELETE FROM records WHERE namespace = ? AND key = ?",
            [(namespace, k) for k in keys],
            namespace,
            keys,
        )
        memory = self._held(namespace)
        if memory is not None:
            for key in keys:
                memory.pop(key, None)
        return changed

    async def add_counts(
        self, namespace: str, items: Sequence[tuple[str, Mapping[str, int], float | None]]
    ) -> list[Record]:
        def add(conn: sqlite3.Connection) -> list[Record]:
            totals = []
            for key, deltas, expires in items:
                record = _current(conn, namespace, key)
                for name, delta in deltas.items():
                    record[name] = int(record.get(name, 0)) + delta
                _upsert(conn, namespace, key, record, expires)
                totals.append(record)
            return totals

        totals = await self._run_transaction(add, namespace, [k for k, _, _ in items])
        self._remember(namespace, ((k, t, e) for (k, _, e), t in zip(items, totals, strict=True)))
        return totals

    async def take_up_to(
        self, namespace: str, key: str, field: str, want: int, limit: int, expires_at: float | None
    ) -> int:
        def take(conn: sqlite3.Connection) -> tuple[int, Record]:
            record = _current(conn, namespace, key)
            have = int(record.get(field, 0))
            granted = max(0, min(want, limit - have))
            if granted:
                record[field] = have + granted
                _upsert(conn, namespace, key, record, expires_at)
            return granted, record

        granted, record = await self._run_transaction(take, namespace, [key])
        self._remember(namespace, [(key, record, expires_at)])
        return granted

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        with self._lock:
            self._conn.close()
