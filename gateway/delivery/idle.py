"""Open connections waiting for more mail to their site, woken one per arrival.

Waking every idle connection of a site for each message (an asyncio.Event)
costs a wakeup per connection per message, and spreads the mail over all of
them, so none builds the backlog that lets a message's end of data travel
with the next one's commands. Here an arrival wakes one connection, the one
idle the shortest time (its peer's state is warmest; the others time out
and close, as Postfix's connection cache lets unused connections go).
"""

import asyncio
import contextlib
from collections import defaultdict, deque
from collections.abc import Hashable


class IdleSessions:
    def __init__(self) -> None:
        self._waiting: dict[Hashable, deque[asyncio.Future[bool]]] = defaultdict(deque)

    async def wait(self, key: Hashable, timeout: float) -> bool:
        """True once mail for `key` arrives (`arrived`), False after `timeout`
        seconds or at `stop`."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        queue = self._waiting[key]
        queue.append(waiter)
        # A timer handle rather than asyncio.wait_for, which makes a task per wait.
        timer = loop.call_later(timeout, _settle, waiter, False)
        try:
            return await waiter
        finally:
            timer.cancel()
            if waiter.cancelled() or not waiter.result():
                # Timed out or cancelled: maybe still queued (a woken one is not).
                with contextlib.suppress(ValueError):
                    queue.remove(waiter)
                if not queue and self._waiting.get(key) is queue:
                    del self._waiting[key]

    def arrived(self, key: Hashable) -> None:
        """Wake one connection waiting for `key`, the last idle first."""
        queue = self._waiting.get(key)
        while queue:
            waiter = queue.pop()
            if not waiter.done():  # else it timed out and is leaving
                waiter.set_result(True)
                break
        if queue is not None and not queue:
            del self._waiting[key]

    def stop(self) -> None:
        """Every waiting connection returns False (no more mail: QUIT)."""
        for queue in self._waiting.values():
            for waiter in queue:
                _settle(waiter, False)
        self._waiting.clear()


def _settle(waiter: asyncio.Future[bool], value: bool) -> None:
    if not waiter.done():
        waiter.set_result(value)
