"""Base for test servers: `with Server(...) as s:` starts it and always stops it."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Service:
    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> object:
        raise NotImplementedError

    def close(self) -> None:
        """What leaving the `with` block does: stop, and drop what it kept."""
        self.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
