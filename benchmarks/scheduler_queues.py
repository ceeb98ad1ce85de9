"""Scheduler queue throughput and memory: the Rust queues (`_core.SchedulerQueues`)
against a straightforward pure-Python heapq scheduler, in the same run.

    .venv/bin/python -m benchmarks.scheduler_queues [--messages 1000000]

Messages spread over 10,000 domains rolled up into 500 sites and 8 egress
sources, due times spread over an hour. Measured: insert, pop-ready (every
message taken once, 1,000 at a time, round-robin over queues) and complete.
Memory per queued message: what the Rust queues hold, and what the Python
baseline's structures take (tracemalloc). Both sides hand out slots only
(`take_ready_slots`: the delivery scheduler keeps its own record per slot).
Every phase is bounded by the message count.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
import time
import tracemalloc
from collections import deque
from collections.abc import Callable

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

    def take_ready_slots(self, now: float, most: int) -> list[int]:
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, slot = heapq.heappop(heap)
            key = self._slots[slot][1]
            queue = self._ready.get(key)
            if queue is None:
                queue = self._ready[key] = deque()
                self._active.append(key)
            queue.append(slot)
        taken: list[int] = []
        while len(taken) < most and self._active:
            key = self._active.popleft()
            queue = self._ready[key]
            taken.append(queue.popleft())
            if queue:
                self._active.append(key)
            else:
                del self._ready[key]
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


def rate(ops: int, started: float) -> float:
    return ops / (time.perf_counter() - started)


def drain(take_ready_slots: Callable[[float, int], list[int]]) -> list[int]:
    """Every slot, 1,000 at a time, as the delivery scheduler takes them."""
    slots: list[int] = []
    while taken := take_ready_slots(3600.0, 1000):
        slots += taken
    return slots


def round_rust(messages: list[Message]) -> dict[str, float]:
    q = SchedulerQueues()
    started = time.perf_counter()
    for i in range(0, len(messages), 10_000):
        q.insert_many(messages[i : i + 10_000])
    result = {"insert": rate(len(messages), started), "memory": q.memory_per_message()}
    started = time.perf_counter()
    slots = drain(q.take_ready_slots)
    result["pop-ready"] = rate(len(slots), started)
    started = time.perf_counter()
    for i in range(0, len(slots), 1000):
        q.finish_many(slots[i : i + 1000])
    result["complete"] = rate(len(slots), started)
    assert len(q) == 0
    assert len(slots) == len(messages)
    return result


def round_python(messages: list[Message]) -> dict[str, float]:
    q = HeapqQueues()
    started = time.perf_counter()
    for message in messages:
        q.insert(message)
    result = {"insert": rate(len(messages), started)}
    started = time.perf_counter()
    slots = drain(q.take_ready_slots)
    result["pop-ready"] = rate(len(slots), started)
    started = time.perf_counter()
    for slot in slots:
        q.finish(slot)
    result["complete"] = rate(len(slots), started)
    assert len(slots) == len(messages)
    return result


def python_memory(messages: list[Message]) -> float:
    """Bytes per queued message in the baseline's structures (tracemalloc)."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    q = HeapqQueues()
    for message in messages:
        q.insert(message)
    memory = (tracemalloc.get_traced_memory()[0] - before) / len(messages)
    tracemalloc.stop()
    return memory


OPS = ("insert", "pop-ready", "complete")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3, help="best of this many, each side")
    args = parser.parse_args()
    messages = workload(args.messages)
    print(f"{args.messages:,} messages, 10,000 domains, 500 sites, 8 sources")
    best: dict[str, dict[str, float]] = {"rust": {}, "python": {}}
    for n in range(args.rounds):  # alternate, so drift in the machine hits both sides
        for side, run in (("rust", round_rust), ("python", round_python)):
            result = run(messages)
            figures = "  ".join(f"{op} {result[op]:,.0f}/s" for op in OPS)
            print(f"round {n + 1} {side:<6} {figures}")
            for key, value in result.items():
                best[side][key] = max(best[side].get(key, 0.0), value)
    memory = {"rust": best["rust"]["memory"], "python": python_memory(messages)}
    print(f"\nbest of {args.rounds} rounds, ops/s:")
    print(f"  {'':<12} {'rust':>12} {'python':>12} {'ratio':>7}")
    for op in OPS:
        r, p = best["rust"][op], best["python"][op]
        print(f"  {op:<12} {r:>12,.0f} {p:>12,.0f} {r / p:>6.1f}x")
    print(
        f"  {'bytes/msg':<12} {memory['rust']:>12,.0f} {memory['python']:>12,.0f} "
        f"{memory['rust'] / memory['python']:>6.2f}x"
    )


if __name__ == "__main__":
    main()
