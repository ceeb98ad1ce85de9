"""A real redis-server on loopback for fleet tests, with its data on disk
(append-only file, fsync always) so a restart keeps it, as in production."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from gateway.testing.net import free_port, wait_for_port
from gateway.testing.service import Service


class RedisServer(Service):
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="gateway-redis-"))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        server = shutil.which("redis-server") or "/usr/bin/redis-server"
        self._proc = subprocess.Popen(
            [server, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self._dir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "",
             "--protected-mode", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for_port("127.0.0.1", self.port, timeout=10)
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)
            self._proc = None

    def close(self) -> None:
        # stop() keeps the data for a restart; leaving the block removes it.
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL: Redis gone at once (its append-only file keeps the data)."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(10)
            self._proc = None
