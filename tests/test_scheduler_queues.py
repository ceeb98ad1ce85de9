"""The Rust scheduler queues through their binding: due order, turns per
key, retries and bad input. (Timing logic is tested in cargo with a
controlled clock; throughput in benchmarks/scheduler_queues.py.)"""

from __future__ import annotations

import pytest

from gateway._core import SchedulerQueues


def qid(n: int) -> str:
    return f"{n:016X}"


def test_due_messages_come_out_in_turn_per_key() -> None:
    q = SchedulerQueues()
    q.insert_many([(qid(n), "src1", "gmail", 1.0, "acme", "", 0) for n in range(25)])
    q.insert(qid(99), "src1", "yahoo", 1.5)
    q.insert(qid(98), "src1", "yahoo", 7200.0)  # beyond the wheel: waits in its heap
    assert q.take_ready(0.5, 100) == []
    taken = q.take_ready(2.0, 4)
    assert [t[2][1] for t in taken] == ["gmail", "yahoo", "gmail", "gmail"]
    assert taken[0][2] == ("src1", "gmail", "acme", "")
    assert taken[1][1] == qid(99)
    rest = q.take_ready_slots(2.0, 100)
    assert len(rest) == 22
    q.finish_many([t[0] for t in taken] + rest)
    assert len(q) == 1
    assert q.next_due() == pytest.approx(7200.0)
    ((_, late, _, _),) = q.take_ready(7200.0, 10)
    assert late == qid(98)


def test_retry_counts_attempts_and_bad_input_is_refused() -> None:
    q = SchedulerQueues()
    slot = q.insert(qid(1), "src1", "site", 0.0)
    q.take_ready(0.0, 1)
    q.retry(slot, 30.0)
    assert q.next_due() == pytest.approx(30.0)
    (again,) = q.take_ready(30.0, 1)
    assert again[3] == 1
    with pytest.raises(ValueError, match="16 ASCII"):
        q.insert("short", "src1", "site", 0.0)
    with pytest.raises(TypeError):
        q.insert_many([(qid(2), "src1", "site", "soon", "", "", 0)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="a message is"):
        q.insert_many([(qid(3), "src1")])  # type: ignore[list-item]
