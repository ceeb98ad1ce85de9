"""Running a process's main coroutine on the configured event loop.

uvloop (libuv) by default: on this project's 2-core machine it relays 8%
more messages per second end to end at 9% less CPU per message than
asyncio's own loop (BENCHMARKS.md, issue 9 fourth round). `[node] event_loop
= "asyncio"` keeps Python's loop, for debugging or where uvloop cannot be
installed; both run the same code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")


def loop_factory(kind: Literal["uvloop", "asyncio"]) -> Callable[[], asyncio.AbstractEventLoop]:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(main: Coroutine[Any, Any, T], kind: Literal["uvloop", "asyncio"]) -> T:
    with asyncio.Runner(loop_factory=loop_factory(kind)) as runner:
        return runner.run(main)


def running_kind() -> str:
    """Which loop this process runs on, as logged at start."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"
