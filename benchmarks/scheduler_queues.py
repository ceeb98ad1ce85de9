"""Scheduler queue throughput and memory: the Rust queues (`_core.SchedulerQueues`)
against a straightforward pure-Python heapq scheduler, in the same run.

    .venv/bin/python -m benchmarks.scheduler_queues [--messages 1000000]

Messages spread over 10,000 domains rolled up into 500 sites and 8 egress
sources, due times spread over an hour. Measured: insert, pop-ready (every
message taken once, 1,000 at a time, round-robin over queues) and complete.
Memory per queued message: what the Rust queues hold, and what the Python
baseline's structures take (tracemalloc). Every phase is bounded by the
message count.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
import time
import tracemalloc
from collections import deque

from gateway._core import SchedulerQueues

Message = tuple[str, str, str, float, str, str, int]
Key = tuple[str, str, str, str]


class HeapqQueues:
    """The baseline: heapq for due times, a deque per queue key, round-robin."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int]] = []
        self._slots: dict[int, tuple[str, Key, int]] = {}
        self._ready: dict[Key, deque[int]] = {}
        self._active: deque[Key] = deque()
        self._ids = itertools.count()

    def insert(self, message: Message) -> int:
        qid, source, site, due, tenant, campaign, attempts = message
        slot = next(self._ids)
        self._slots[slot] = (qid, (source, site, tenant, campaign), attempts)
        heapq.heappush(self._heap, (due, slot))
        return slot

    def take_ready(self, now: float, most: int) -> list[tuple[int, str, Key, int]]:
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, slot = heapq.heappop(heap)
            key = self._slots[slot][1]
            queue = self._ready.get(key)
            if queue is None:
                queue = self._ready[key] = deque()
                self._active.append(key)
            queue.append(slot)
        taken: list[tuple[int, str, Key, int]] = []
        while len(taken) < most and self._active:
            key = self._active.popleft()
            queue = self._ready[key]
            slot = queue.popleft()
            if queue:
                self._active.append(key)
            else:
                del self._ready[key]
            qid, _, attempts = self._slots[slot]
            taken.append((slot, qid, key, attempts))
        return taken

    def finish(self, slot: int) -> None:
        del self._slots[slot]


def workload(count: int) -> list[Message]:
    rng = random.Random(42)
    sites = [f"site{n}.example" for n in range(500)]
    domain_site = [sites[n % 500] for n in range(10_000)]
    sources = [f"192.0.2.{n}" for n in range(1, 9)]
    return [
        (
            f"{n:016X}",
            sources[n % 8],
            domain_site[rng.randrange(10_000)],
            rng.uniform(0, 3600),
            "",
            "",
            0,
        )
        for n in range(count)
    ]


def timed(label: str, ops: int, started: float) -> float:
    rate = ops / (time.perf_counter() - started)
    print(f"  {label:<12} {rate:>12,.0f} ops/s")
    return rate


def run_rust(messages: list[Message]) -> dict[str, float]:
    print("rust SchedulerQueues")
    q = SchedulerQueues()
    started = time.perf_counter()
    for i in range(0, len(messages), 10_000):
        q.insert_many(messages[i : i + 10_000])
    result = {"insert": timed("insert", len(messages), started)}
    memory = q.memory_per_message()
    print(f"  {'memory':<12} {memory:>12,} bytes per queued message")
    started = time.perf_counter()
    slots: list[int] = []
    while True:
        taken, _ = q.take_ready(3600.0, 1000)
        if not taken:
            break
        slots += [t[0] for t in taken]
    result["pop-ready"] = timed("pop-ready", len(slots), started)
    started = time.perf_counter()
    for i in range(0, len(slots), 1000):
        q.finish_many(slots[i : i + 1000])
    result["complete"] = timed("complete", len(slots), started)
    assert len(q) == 0
    assert len(slots) == len(messages)
    result["memory"] = memory
    return result


def run_python(messages: list[Message]) -> dict[str, float]:
    print("python heapq baseline")
    q = HeapqQueues()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for message in messages:
        q.insert(message)
    memory = (tracemalloc.get_traced_memory()[0] - before) // len(messages)
    tracemalloc.stop()
    # Timed again without tracemalloc, which slows allocation down.
    q = HeapqQueues()
    started = time.perf_counter()
    for message in messages:
        q.insert(message)
    result = {"insert": timed("insert", len(messages), started)}
    print(f"  {'memory':<12} {memory:>12,} bytes per queued message (tracemalloc)")
    started = time.perf_counter()
    slots: list[int] = []
    while True:
        taken = q.take_ready(3600.0, 1000)
        if not taken:
            break
        slots += [t[0] for t in taken]
    result["pop-ready"] = timed("pop-ready", len(slots), started)
    started = time.perf_counter()
    for slot in slots:
        q.finish(slot)
    result["complete"] = timed("complete", len(slots), started)
    result["memory"] = memory
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    args = parser.parse_args()
    messages = workload(args.messages)
    print(f"{args.messages:,} messages, 10,000 domains, 500 sites, 8 sources")
    rust = run_rust(messages)
    python = run_python(messages)
    for op in ("insert", "pop-ready", "complete"):
        print(f"ratio rust/python, {op}: {rust[op] / python[op]:.1f}x")
    print(f"memory rust/python: {rust['memory'] / python['memory']:.2f}")


if __name__ == "__main__":
    main()
