"""The Rust scheduler queues through their binding (issue 4, in progress)."""

from __future__ import annotations

import pytest

from gateway._core import SchedulerQueues


def qid(n: int) -> str:
    return f"{n:016X}"


def test_rate_and_suspension_hold_and_say_when_to_return() -> None:
    q = SchedulerQueues()
    q.insert_many([(qid(n), "src1", "gmail", 0.0, "acme", "", 0) for n in range(25)])
    q.insert(qid(99), "src1", "yahoo", 0.0)
    q.set_rate("src1", "gmail", "10/s")
    q.suspend("site", "yahoo", 5.0)
    taken, wake = q.take_ready(1.0, 100)
    assert [t[2][1] for t in taken] == ["gmail"] * 10
    assert wake == pytest.approx(1.1)
    assert taken[0][2] == ("src1", "gmail", "acme", "")
    later, _ = q.take_ready(5.0, 100)
    assert {t[2][1] for t in later} == {"gmail", "yahoo"}
    q.finish_many([t[0] for t in taken + later])
    assert len(q) == 25 - 10 - (len(later) - 1)


def test_retry_counts_attempts_and_bad_input_is_refused() -> None:
    q = SchedulerQueues()
    slot = q.insert(qid(1), "src1", "site", 0.0)
    q.take_ready(0.0, 1)
    q.retry(slot, 30.0)
    assert q.next_due() == pytest.approx(30.0)
    (again,), _ = q.take_ready(30.0, 1)
    assert again[3] == 1
    with pytest.raises(ValueError, match="16 ASCII"):
        q.insert("short", "src1", "site", 0.0)
    with pytest.raises(ValueError, match="not a rate"):
        q.set_rate("src1", "site", "fast")
    with pytest.raises(ValueError, match="unknown scope"):
        q.suspend("planet", "x", 1.0)
