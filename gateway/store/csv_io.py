"""CSV import and export of a policy-store namespace, for lists of any size.

Plugins that keep lists (suppression, consent) share this: export streams
the namespace as CSV text in chunks of about 64 KiB, so a million rows never
sit in memory as one string; import reads lines as they arrive (from a file
or an HTTP upload) and writes them in transactions of `BATCH` rows. Each
plugin says only how a row maps to its records and back.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from typing import Any

from gateway.store import PolicyStore

BATCH = 10_000  # rows per transaction on import
CHUNK = 64 * 1024  # characters per exported chunk

# (key, record) -> the row's columns
RecordToRow = Callable[[str, Mapping[str, Any]], Mapping[str, Any]]
# (row, line number) -> (key, record, expires_at); raises ValueError naming the line
RowToItem = Callable[[dict[str, str], int], tuple[str, dict[str, Any], float | None]]


def export_csv(
    store: PolicyStore, namespace: str, columns: list[str], to_row: RecordToRow
) -> Iterator[str]:
    """The namespace as CSV text: a header, then one line per live record."""
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, extrasaction="ignore")
    writer.writeheader()
    for key, record in store.scan(namespace):
        writer.writerow(to_row(key, record))
        if out.tell() > CHUNK:
            yield out.getvalue()
            out.seek(0)
            out.truncate()
    yield out.getvalue()


async def import_csv(
    store: PolicyStore,
    namespace: str,
    lines: AsyncIterator[str] | Iterable[str],
    to_item: RowToItem,
) -> int:
    """Import CSV lines (a header first); returns how many rows. A bad row stops
    the import with its line number; the batches before it are kept."""
    header: list[str] | None = None
    pending: list[tuple[str, dict[str, Any], float | None]] = []
    count, number = 0, 0
    async for line in _each(lines):
        number += 1
        if not line.strip():
            continue
        values = next(csv.reader([line]))
        if header is None:
            header = [name.strip() for name in values]
            continue
        pending.append(to_item(dict(zip(header, values, strict=False)), number))
        if len(pending) >= BATCH:
            await store.put_many(namespace, pending)
            count += len(pending)
            pending = []
    if pending:
        await store.put_many(namespace, pending)
        count += len(pending)
    return count


async def _each(lines: AsyncIterator[str] | Iterable[str]) -> AsyncIterator[str]:
    if isinstance(lines, AsyncIterator):
        async for line in lines:
            yield line
    else:
        for line in lines:
            yield line
