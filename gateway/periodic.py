"""A piece of work run every few seconds in the background (batched writes to
the policy store), once more when stopped, and kept running through errors:
a flush that fails (the shared store is unreachable) is logged and tried
again next time, never the end of the loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from gateway.log import event


class Periodic:
    def __init__(self, name: str, seconds: float, work: Callable[[], Awaitable[None]]) -> None:
        self.name, self.seconds, self.work = name, seconds, work
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self.name)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.seconds)
            await self.run_once()

    async def run_once(self) -> None:
        try:
            await self.work()
        except Exception as exc:  # logged; the next turn tries again
            if not self._failing:
                event("background_failed", logging.ERROR, task=self.name, error=repr(exc))
            self._failing = True
        else:
            if self._failing:
                event("background_recovered", task=self.name)
            self._failing = False

    async def stop(self) -> None:
        """Stop the loop and run the work a last time."""
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.run_once()
