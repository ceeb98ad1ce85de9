"""The spool on its own: group commit into segments, finishing in batches,
recovery after crashes (torn records, a message moved to its own file), and
the owner finding what no notice announced. Real files in a temporary
directory; the end-to-end crash tests are in test_crash_safety.py."""

from __future__ import annotations

import asyncio
import errno
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway import spool_segments
from gateway.spool import (
    BATCH_BYTES,
    FINISH_LINGER_SECONDS,
    Envelope,
    Spool,
    SpoolError,
    on_pool,
    stored_qids,
)
from gateway.spool_segments import Append


def body(n: int) -> bytes:
    return f"Subject: {n}\r\n\r\nhi\r\n".encode()


def envelope(spool: Spool, n: int = 0, recipients: int = 1) -> Envelope:
    rcpts = [f"r{n}.{i}@b.test" for i in range(recipients)]
    return Envelope(spool.new_qid(), "s@a.test", rcpts, time.time(), size=len(body(n)))


async def store_some(spool: Spool, count: int) -> list[Envelope]:
    """`count` small messages stored one after another (one segment)."""
    envs = [envelope(spool, n) for n in range(count)]
    for n, env in enumerate(envs):
        await spool.store(env, body(n))
    return envs


def count_finish_trips(spool: Spool) -> list[list[tuple[str, str | None]]]:
    """The batches of finishes the spool's I/O threads get from now on."""
    trips: list[list[tuple[str, str | None]]] = []
    finish = spool._finish

    def counted(batch: list[tuple[str, str | None]]) -> list[Exception | None]:
        trips.append(list(batch))
        return finish(batch)

    spool._finishes._carry = on_pool(spool._pool, counted)
    return trips


def segments(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "segments").iterdir())


def test_group_commit_stores_waiting_messages_together_in_one_segment(tmp_path: Path) -> None:
    async def scenario(spool: Spool) -> tuple[list[Any], list[int], list[str]]:
        trips: list[int] = []
        first_trip_ended = asyncio.get_running_loop().create_future()
        carry = spool._stores._carry

        def counted(items: list[Any], done: Callable[[list[Any]], None]) -> None:
            trips.append(len(items))
            # The first trip's results are held back: it stays on its way.
            carry(items, first_trip_ended.set_result if len(trips) == 1 else done)
            if len(trips) == 1:
                held.append(done)

        held: list[Callable[[list[Any]], None]] = []
        spool._stores._carry = counted
        envs = [envelope(spool, n) for n in range(9)]
        first = asyncio.ensure_future(spool.store(envs[0], body(0)))
        results_of_first = await asyncio.wait_for(first_trip_ended, 5)  # written and synced
        rest = [asyncio.ensure_future(spool.store(e, body(n))) for n, e in enumerate(envs) if n]
        await asyncio.sleep(0.05)
        held[0](results_of_first)
        results = await asyncio.gather(first, *rest, return_exceptions=True)
        bodies = [await spool.read_body(e.qid, e.size) for e in envs]
        assert bodies == [body(n) for n in range(9)]
        return results, trips, [e.qid for e in envs]

    spool = Spool(tmp_path)
    results, trips, qids = asyncio.run(scenario(spool))
    assert trips == [1, 8]  # the eight that arrived meanwhile went together
    assert {r[0] for r in results} == {f"{qids[0]}-{os.getpid()}"}  # one segment
    assert stored_qids(tmp_path) == sorted(qids)
    spool.close()


def test_a_failed_write_refuses_its_batch_keeps_none_of_it_and_moves_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(spool: Spool) -> tuple[Any, Any, Any]:
        kept = envelope(spool, 1)
        first = await spool.store(kept, body(1))
        assert first is not None
        size = (tmp_path / "segments" / f"{first[0]}.seg").stat().st_size

        def torn(batch: Append, sync_dir: Path | None, then: Callable[[int], None]) -> None:
            # Half the batch reaches the file, then the disk is full.
            with batch.path.open("ab") as segment:
                segment.write(batch.data[: len(batch.data) // 2])
            asyncio.get_running_loop().call_soon(then, errno.ENOSPC)

        monkeypatch.setattr(spool._sync_jobs, "submit", torn)
        refused = envelope(spool, 2)
        with pytest.raises(SpoolError) as failed:
            await spool.store(refused, body(2))
        assert failed.value.no_space
        # Cut back to what was acknowledged before, and sealed.
        contents = spool_segments.scan(tmp_path / "segments" / f"{first[0]}.seg")
        assert (contents.end, contents.sealed) == (size + len(spool_segments.SEAL), True)
        monkeypatch.undo()
        later = envelope(spool, 3)
        second = await spool.store(later, body(3))
        return first, second, (kept.qid, refused.qid, later.qid)

    spool = Spool(tmp_path)
    first, second, (kept, _, later) = asyncio.run(scenario(spool))
    assert first[0] != second[0]  # a new segment after the failure
    assert stored_qids(tmp_path) == sorted([kept, later])
    spool.close()


def test_finishing_goes_in_batches_and_a_sealed_finished_segment_is_removed(
    tmp_path: Path,
) -> None:
    async def scenario() -> tuple[list[Any], list[list[Any]]]:
        spool = Spool(tmp_path)
        envs = await store_some(spool, 5)
        big = envelope(spool, 9)
        await spool.store(big, b"x" * (BATCH_BYTES + 1))  # in a file of its own
        broken = envelope(spool, 10)
        await spool.store(broken, b"y" * (BATCH_BYTES + 1))
        # This one cannot be removed: a directory stands where its file was.
        (spool.queue / broken.qid).unlink()
        (spool.queue / broken.qid).mkdir()
        (spool.queue / broken.qid / "x").touch()
        trips = count_finish_trips(spool)
        qids = [e.qid for e in [*envs, big, broken]]
        results = await asyncio.gather(*(spool.finish(q) for q in qids), return_exceptions=True)
        assert await spool.collect() == []
        assert len(segments(tmp_path)) == 2  # still being written: kept
        await spool._stores.run(None)  # the idle seal, without waiting for it
        spool._writer.last_write = 0
        await spool._stores.run(None)
        assert await spool.collect() == []
        spool.close()
        return results, trips

    results, trips = asyncio.run(scenario())
    assert [len(t) for t in trips] == [7]  # one I/O trip for all
    assert [r is not None for r in results] == [False] * 6 + [True]
    assert isinstance(results[6], OSError)
    assert segments(tmp_path) == []  # sealed and all done: removed, with its done file
    assert stored_qids(tmp_path) == [trips[0][6][0]]


def test_finishes_a_moment_apart_wait_for_each_other_and_share_one_trip(
    tmp_path: Path,
) -> None:
    async def scenario() -> list[int]:
        spool = Spool(tmp_path)
        envs = await store_some(spool, 4)
        trips = count_finish_trips(spool)

        async def finish_after(qid: str, delay: float) -> None:
            await asyncio.sleep(delay)
            await spool.finish(qid)

        gap = 0.002  # four of them within one linger
        assert 3 * gap < FINISH_LINGER_SECONDS
        await asyncio.gather(*(finish_after(e.qid, n * gap) for n, e in enumerate(envs)))
        spool.close()
        return [len(trip) for trip in trips]

    assert asyncio.run(scenario()) == [4]


def test_recovery_replays_the_journal_of_a_message_moved_to_its_own_file(
    tmp_path: Path,
) -> None:
    async def scenario() -> Envelope:
        spool = Spool(tmp_path)
        env = envelope(spool, recipients=2)
        await spool.store(env, body(0))
        # Two destinations' outcomes at once: the message moves out once.
        await asyncio.gather(
            spool.record(env.qid, [{"i": 0, "s": "delivered", "a": 1}]),
            spool.record(env.qid, [{"i": 1, "s": "pending", "a": 1, "n": 5.0}]),
        )
        assert (spool.queue / env.qid).exists()
        assert await spool.read_body(env.qid) == body(0)
        with (spool.queue / f"{env.qid}.log").open("ab") as fh:
            fh.write(b'{"i": 1, "s": "deliv')  # a crash mid-append
        (spool.tmp / "debris").write_bytes(b"half a message")
        spool.close()
        return env

    env = asyncio.run(scenario())
    spool = Spool(tmp_path)
    (message,) = spool.recover()
    assert (message.qid, message.location) == (env.qid, None)
    assert [r.status for r in message.recipients] == ["delivered", "pending"]
    assert not list((tmp_path / "tmp").iterdir())
    assert segments(tmp_path) == []  # its segment had nothing else: removed
    spool.close()


def test_recovery_after_a_crash_between_the_move_and_its_done_mark(tmp_path: Path) -> None:
    async def scenario() -> Envelope:
        spool = Spool(tmp_path)
        env = envelope(spool)
        await spool.store(env, body(0))
        await spool.record(env.qid, [{"i": 0, "s": "pending", "a": 1, "n": 5.0}])
        spool.close()
        return env

    env = asyncio.run(scenario())
    # Undo the done mark, as if the crash came before it was written.
    for done in (tmp_path / "segments").glob("*.done"):
        done.write_bytes(b"")
    spool = Spool(tmp_path)
    recovered = list(spool.recover())
    assert [m.qid for m in recovered] == [env.qid]  # once: the file wins
    assert recovered[0].location is None
    spool.close()


def test_recovery_ignores_a_torn_record_and_keeps_those_before(tmp_path: Path) -> None:
    async def scenario() -> list[Envelope]:
        spool = Spool(tmp_path)
        envs = await store_some(spool, 3)
        await spool.finish(envs[1].qid)
        return envs

    envs = asyncio.run(scenario())  # never closed: as after kill -9
    (path,) = (tmp_path / "segments").glob("*.seg")
    torn = spool_segments.record_bytes("TORNTORNTORNTORN", b"DGSPOOL1 {}\n" + body(7))
    with path.open("ab") as fh:
        fh.write(torn[:-5])
    spool = Spool(tmp_path)
    recovered = {m.qid: m for m in spool.recover()}
    assert sorted(recovered) == sorted([envs[0].qid, envs[2].qid])
    assert asyncio.run(spool.read_body(envs[2].qid)) == body(2)
    spool.close()


def test_the_owner_finds_what_a_dead_writer_stored_but_never_announced(tmp_path: Path) -> None:
    async def scenario() -> None:
        worker = Spool(tmp_path, owner=False)
        env = envelope(worker)
        location = await worker.store(env, body(0))
        assert location is not None
        owner = Spool(tmp_path)  # running: it did not recover, and no notice came
        assert await owner.collect() == []  # the worker's segment is still open
        worker.close()  # sealed: its writer will add nothing
        (found,) = await owner.collect()
        assert (found.qid, found.location) == (env.qid, location)
        assert not owner.adopt(env.qid, location)  # a late notice changes nothing
        assert await owner.read_body(env.qid, env.size) == body(0)
        await owner.finish(env.qid)
        assert await owner.collect() == []
        assert segments(tmp_path) == []
        owner.close()

    asyncio.run(scenario())


def test_a_segment_whose_writer_died_unsealed_counts_as_sealed(tmp_path: Path) -> None:
    dead = 4_000_000  # above the kernel's pid_max default: no such process
    (tmp_path / "segments").mkdir(parents=True)
    env = Envelope("DEADWRITER000001", "s@a.test", ["r@b.test"], time.time())
    record = spool_segments.record_bytes(env.qid, b"DGSPOOL1 " + env.to_json() + b"\n" + body(1))
    sid = f"{env.qid}-{dead}"
    (tmp_path / "segments" / f"{sid}.seg").write_bytes(record)

    async def scenario() -> None:
        owner = Spool(tmp_path)
        offset = len(record) - len(record.split(b"\n", 1)[1])
        assert owner.adopt("OTHER00000000000", (sid, offset, 1))
        await owner.finish("OTHER00000000000")
        (found,) = await owner.collect()
        assert found.qid == env.qid
        owner.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("batch_bytes", [BATCH_BYTES, 0])  # segments, then files
def test_the_spool_benchmark_stores_and_finishes_every_message(
    tmp_path: Path, batch_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks import spool_sync

    monkeypatch.setattr("gateway.spool.BATCH_BYTES", batch_bytes)
    per_s, cpu = asyncio.run(spool_sync.run(tmp_path, 300, 10))
    assert per_s > 0
    assert cpu >= 0
    assert stored_qids(tmp_path) == []  # every one stored was finished
    kinds = {p.suffix for p in (tmp_path / "segments").iterdir()}
    assert kinds == ({".seg", ".done"} if batch_bytes else set())


def test_a_writer_moves_to_a_new_segment_when_one_is_full_and_a_look_alike_seal_is_no_seal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past SEGMENT_BYTES the writer seals and opens the next; finished, the
    sealed ones go and the open one stays. A message that ends in the seal's
    bytes does not make its segment look sealed to the owner."""
    monkeypatch.setattr(spool_segments, "SEGMENT_BYTES", 1000)
    look_alike = b"Subject: x\r\n\r\nDGSEAL\n"

    async def scenario() -> list[str]:
        spool = Spool(tmp_path)
        qids = []
        for n in range(8):
            env = envelope(spool, n)
            await spool.store(env, body(n) * 20 if n < 7 else look_alike)
            qids.append(env.qid)
        for qid in qids:
            await spool.finish(qid)
        await spool.collect()
        left = segments(tmp_path)
        open_one = tmp_path / "segments" / left[-1]
        assert spool_segments.ends_sealed(open_one)  # the look-alike, last
        assert not spool_segments.scan(open_one).sealed
        spool.close()
        return left

    left = asyncio.run(scenario())
    # The full ones went; the last, open, holds the look-alike and stays.
    assert [name.rsplit(".", 1)[1] for name in left] == ["done", "seg"]


def test_a_damaged_record_is_set_aside_and_the_ones_after_it_are_recovered(
    tmp_path: Path,
) -> None:
    async def scenario() -> list[Envelope]:
        spool = Spool(tmp_path)
        envs = await store_some(spool, 3)
        spool.close()
        return envs

    envs = asyncio.run(scenario())
    (path,) = (tmp_path / "segments").glob("*.seg")
    raw = bytearray(path.read_bytes())
    middle = spool_segments.scan(path).records[1]
    raw[middle.offset + middle.length - 3] ^= 0xFF  # a flipped bit in its body
    path.write_bytes(bytes(raw))
    spool = Spool(tmp_path)
    recovered = sorted(m.qid for m in spool.recover())
    assert recovered == sorted([envs[0].qid, envs[2].qid])
    kept = (tmp_path / "corrupt" / envs[1].qid).read_bytes()
    assert kept == bytes(raw[middle.offset : middle.offset + middle.length])

    async def finish_the_rest() -> None:
        for qid in recovered:
            await spool.finish(qid)
        assert await spool.collect() == []  # the damaged one is not found again

    asyncio.run(finish_the_rest())
    assert segments(tmp_path) == []
    spool.close()
