"""The fleet's policy store: Redis, with a memory copy on every node.

Each namespace is one Redis hash (`PREFIX:ns:NAMESPACE`), field = key, value
= JSON `{"r": record, "e": expires_at}`. Reads stay in memory as with SQLite
(one per RCPT must not cross the network); a write goes to Redis in a
MULTI/EXEC transaction together with a PUBLISH on `PREFIX:changes` naming the
keys, and every node's listener re-reads those keys, so a suppression added
on one node holds on all of them within milliseconds.

When Redis cannot be reached, a node cannot know what it missed: reads
raise StoreUnavailable until the listener is connected again and has
re-read every namespace it holds. SMTP checks that read the store
(suppression, consent) then answer 451 4.3.0 — they fail closed — and
writes raise StoreUnavailable too. redis-py (the maintained client) talks
to Redis; the listener is a thread so the event loop never blocks on it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import redis

from gateway.log import event
from gateway.store import Entry, MirroredStore, Record, StoreUnavailable

T = TypeVar("T")
BATCH = 10_000  # fields per HSET/HMGET round trip
PING_SECONDS = 1.0  # how often the listener checks its connection
ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


# The record under one field as it stands (empty if absent or expired); the
# shared prelude of the counting scripts. ARGV[3] is the caller's clock.
_CURRENT = """
local function current(field)
  local raw = redis.call('HGET', KEYS[1], field)
  if raw then
    local entry = cjson.decode(raw)
    if entry.e == cjson.null or entry.e > tonumber(ARGV[3]) then return entry.r end
  end
  return {}
end
local function expiry(value)
  if value == '' then return cjson.null end
  return tonumber(value)
end
"""

# ARGV: channel, change message, now, then (field, deltas as JSON, expiry) triples.
ADD_COUNTS = (
    _CURRENT
    + """
local out = {}
for i = 4, #ARGV, 3 do
  local record = current(ARGV[i])
  for name, delta in pairs(cjson.decode(ARGV[i + 1])) do
    record[name] = (tonumber(record[name]) or 0) + delta
  end
  local encoded = cjson.encode({r = record, e = expiry(ARGV[i + 2])})
  redis.call('HSET', KEYS[1], ARGV[i], encoded)
  out[#out + 1] = encoded
end
redis.call('PUBLISH', ARGV[1], ARGV[2])
return out
"""
)

# ARGV: channel, change message, now, field, name, want, limit, expiry.
TAKE_UP_TO = (
    _CURRENT
    + """
local record = current(ARGV[4])
local have = tonumber(record[ARGV[5]]) or 0
local granted = math.max(0, math.min(tonumber(ARGV[6]), tonumber(ARGV[7]) - have))
if granted > 0 then
  record[ARGV[5]] = have + granted
  redis.call('HSET', KEYS[1], ARGV[4], cjson.encode({r = record, e = expiry(ARGV[8])}))
  redis.call('PUBLISH', ARGV[1], ARGV[2])
end
return {granted, redis.call('HGET', KEYS[1], ARGV[4]) or ''}
"""
)


def _entry(raw: bytes | str) -> Entry:
    value = json.loads(raw)
    return value["r"], value["e"]


class RedisStore(MirroredStore):
    def __init__(self, url: str, prefix: str = "gateway") -> None:
        self._redis = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._prefix = prefix
        self._channel = f"{prefix}:changes"
        self._origin = uuid.uuid4().hex  # our own change messages are skipped
        self._memory: dict[str, dict[str, Entry]] = {}
        self._lock = threading.RLock()
        self._healthy = threading.Event()
        self._stop = threading.Event()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="redis-store")
        self._add_counts = self._redis.register_script(ADD_COUNTS)
        self._take_up_to = self._redis.register_script(TAKE_UP_TO)
        self._listener = threading.Thread(target=self._listen, name="redis-listener", daemon=True)
        self._listener.start()
        self._healthy.wait(3.0)  # start serving at once if Redis is there

    @property
    def healthy(self) -> bool:
        return self._healthy.is_set()

    def _key(self, namespace: str) -> str:
        return f"{self._prefix}:ns:{namespace}"

    # -- reads (memory) ----------------------------------------------------------

    def _namespace(self, namespace: str) -> dict[str, Entry]:
        if not self._healthy.is_set():
            raise StoreUnavailable("Redis is unreachable; policy state may be stale")
        loaded = self._memory.get(namespace)
        if loaded is None:
            with self._lock:
                loaded = self._memory.get(namespace)
                if loaded is None:
                    loaded = self._memory[namespace] = self._load(namespace)
        return loaded

    def _load(self, namespace: str) -> dict[str, Entry]:
        try:
            return {
                field.decode(): _entry(raw)
                for field, raw in self._redis.hscan_iter(self._key(namespace), count=BATCH)
            }
        except ERRORS as exc:
            self._healthy.clear()
            raise StoreUnavailable(f"Redis: {exc}") from None

    def _fetch(self, namespace: str, key: str) -> Entry | None:
        try:
            raw = self._redis.hget(self._key(namespace), key)
        except ERRORS as exc:
            raise StoreUnavailable(f"Redis: {exc}") from None
        return _entry(raw) if raw is not None else None

    def _fetch_prefix(self, namespace: str, prefix: str) -> Iterator[tuple[str, Entry]]:
        try:
            found = list(self._redis.hscan_iter(self._key(namespace), match=f"{prefix}*"))
        except ERRORS as exc:
            raise StoreUnavailable(f"Redis: {exc}") from None
        for field, raw in found:
            yield field.decode(), _entry(raw)

    # -- writes (Redis, then memory) ---------------------------------------------

    async def _run(self, work: Callable[[], T]) -> T:
        def guarded() -> T:
            try:
                return work()
            except ERRORS as exc:
                raise StoreUnavailable(f"Redis: {exc}") from None

        return await asyncio.get_running_loop().run_in_executor(self._writer, guarded)

    def _change(self, namespace: str, keys: Sequence[str]) -> str:
        """The message telling other nodes which keys to re-read."""
        message = {"o": self._origin, "n": namespace, "k": list(keys)}
        return json.dumps(message, separators=(",", ":"))

    def _publish(self, pipe: Any, namespace: str, keys: Sequence[str]) -> None:
        pipe.publish(self._channel, self._change(namespace, keys))

    def _remember(self, namespace: str, fields: Sequence[str], raws: Sequence[bytes]) -> None:
        memory = self._memory.get(namespace)
        if memory is not None:
            for key, raw in zip(fields, raws, strict=True):
                if raw:
                    memory[key] = _entry(raw)

    async def put_many(
        self, namespace: str, items: Sequence[tuple[str, Mapping[str, Any], float | None]]
    ) -> None:
        def write() -> None:
            for start in range(0, len(items), BATCH):
                chunk = items[start : start + BATCH]
                mapping: dict[Any, Any] = {
                    k: json.dumps({"r": dict(r), "e": e}, sort_keys=True) for k, r, e in chunk
                }
                with self._redis.pipeline(transaction=True) as pipe:
                    pipe.hset(self._key(namespace), mapping=mapping)
                    self._publish(pipe, namespace, [k for k, _, _ in chunk])
                    pipe.execute()

        await self._run(write)
        memory = self._memory.get(namespace)
        if memory is not None:
            for key, record, expires in items:
                memory[key] = (dict(record), expires)

    async def delete_many(self, namespace: str, keys: Sequence[str]) -> int:
        def delete() -> int:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.hdel(self._key(namespace), *keys)
                self._publish(pipe, namespace, keys)
                removed, _ = pipe.execute()
            return int(removed)

        if not keys:
            return 0
        removed = await self._run(delete)
        memory = self._memory.get(namespace)
        if memory is not None:
            for key in keys:
                memory.pop(key, None)
        return removed

    async def add_counts(
        self, namespace: str, items: Sequence[tuple[str, Mapping[str, int], float | None]]
    ) -> list[Record]:
        if not items:
            return []
        keys = [k for k, _, _ in items]
        args: list[str | int | float] = [self._channel, self._change(namespace, keys), time.time()]
        for key, deltas, expires in items:
            args += [key, json.dumps(dict(deltas)), "" if expires is None else expires]
        raws = await self._run(lambda: self._add_counts(keys=[self._key(namespace)], args=args))
        self._remember(namespace, keys, raws)
        return [_entry(raw)[0] for raw in raws]

    async def take_up_to(
        self, namespace: str, key: str, field: str, want: int, limit: int, expires_at: float | None
    ) -> int:
        args: list[str | int | float] = [
            self._channel,
            self._change(namespace, [key]),
            time.time(),
            key,
            field,
            want,
            limit,
            "" if expires_at is None else expires_at,
        ]
        granted, raw = await self._run(
            lambda: self._take_up_to(keys=[self._key(namespace)], args=args)
        )
        self._remember(namespace, [key], [raw])
        return int(granted)

    # -- other nodes' writes ---------------------------------------------------

    def _listen(self) -> None:
        while not self._stop.is_set():
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call,unused-ignore]
            try:
                pubsub.subscribe(self._channel)
                self._reload()  # whatever changed while we were not listening
                if not self._healthy.is_set():
                    event("store_connected", backend="redis")
                self._healthy.set()
                pinged = time.monotonic()
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=PING_SECONDS)
                    if message is not None and message["type"] == "message":
                        self._apply(json.loads(message["data"]))
                    if time.monotonic() - pinged >= PING_SECONDS:
                        pubsub.ping()
                        pinged = time.monotonic()
            except ERRORS as exc:
                if self._healthy.is_set():
                    event("store_unavailable", logging.ERROR, backend="redis", error=str(exc))
                self._healthy.clear()
                self._stop.wait(0.5)
            finally:
                pubsub.close()

    def _reload(self) -> None:
        with self._lock:
            for namespace in list(self._memory):
                self._memory[namespace] = self._load(namespace)

    def _apply(self, change: dict[str, Any]) -> None:
        namespace = change["n"]
        memory = self._memory.get(namespace)
        if change["o"] == self._origin or memory is None:
            return  # our own write (memory already has it), or a namespace we do not hold
        keys: list[str] = change["k"]
        for start in range(0, len(keys), BATCH):
            chunk = keys[start : start + BATCH]
            values = self._redis.hmget(self._key(namespace), chunk)
            for key, raw in zip(chunk, values, strict=True):
                if raw is None:
                    memory.pop(key, None)
                else:
                    memory[key] = _entry(raw)

    def close(self) -> None:
        self._stop.set()
        self._listener.join(5)
        self._writer.shutdown(wait=True)
        self._redis.close()
