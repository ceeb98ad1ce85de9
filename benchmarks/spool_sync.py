"""The durable spool: messages stored and finished per second, and the whole
machine's CPU per message (the filesystem's journal threads included), for
the spool's segments against one file per message, in the same run.

    .venv/bin/python -m benchmarks.spool_sync [--messages 4000] [--writers 20]

Both sides go through `gateway.spool.Spool` with its group commit: `--writers`
coroutines store 2 KB messages as fast as they are acknowledged (a store
returns once its message is synced), then each is finished as delivery
finishes it. The peer stores every message in a file of its own (written,
fdatasync'd, renamed, and a directory fsync per batch), which is how the spool
kept every message before segments and how Postfix keeps its queue files.
The spool lives in a temporary directory under --dir (default: the system's
temporary directory; it must be on the disk under test, not tmpfs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from gateway import spool as spool_module
from gateway.spool import Envelope, Spool


def machine_cpu() -> float:
    """Seconds of CPU the whole machine has spent, all processes and the kernel."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


async def run(root: Path, messages: int, writers: int) -> tuple[float, float]:
    spool = Spool(root)
    body = b"Subject: spool benchmark\r\n\r\n" + b"x" * 2000 + b"\r\n"
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(messages):
        queue.put_nowait(n)

    async def writer() -> None:
        while not queue.empty():
            queue.get_nowait()
            env = Envelope(spool.new_qid(), "s@a.test", ["r@b.test"], time.time(), size=len(body))
            await spool.store(env, body)
            await spool.finish(env.qid)

    started, cpu = time.perf_counter(), machine_cpu()
    await asyncio.wait_for(asyncio.gather(*(writer() for _ in range(writers))), 300)
    elapsed, used = time.perf_counter() - started, machine_cpu() - cpu
    spool.close()
    return messages / elapsed, used / messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--writers", type=int, default=20)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    print(f"{args.messages} messages of 2 KB, {args.writers} writers, stored and finished")
    results: dict[str, tuple[float, float]] = {}
    for name in ("segments", "files", "segments", "files"):  # interleaved
        batch_bytes = spool_module.BATCH_BYTES
        if name == "files":
            spool_module.BATCH_BYTES = 0  # every message goes to a file of its own
        try:
            with tempfile.TemporaryDirectory(dir=args.dir) as d:
                per_s, cpu = asyncio.run(run(Path(d), args.messages, args.writers))
        finally:
            spool_module.BATCH_BYTES = batch_bytes
        print(f"{name:<9} {per_s:8.0f} msg/s   {cpu * 1e6:6.0f} µs machine CPU per message")
        best = results.get(name)
        results[name] = max(best or (0.0, 0.0), (per_s, -cpu))
    segs, files = results["segments"], results["files"]
    print(f"ratio segments/files, messages/s (the faster of 2 runs): {segs[0] / files[0]:.1f}")
    print(f"ratio files/segments, CPU per message (the faster of 2 runs): {files[1] / segs[1]:.1f}")


if __name__ == "__main__":
    main()
