"""The queue manager's ingress workers: started, watched, restarted, stopped.

Each worker is `python -m gateway ingress-worker`, handed the checked
configuration (as JSON in its environment, so embedded defaults and a file
behave alike) and the directory its metrics go to. A worker that exits
unexpectedly is started again after a pause that doubles up to 30 s; on
shutdown every worker gets SIGTERM, finishes its open transactions and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from gateway.config import Config
from gateway.log import event
from gateway.worker_metrics import ENV as METRICS_ENV

CONFIG_ENV = "GATEWAY_WORKER_CONFIG"
MAX_RESTART_PAUSE = 30.0


class Workers:
    def __init__(self, config: Config, metrics_dir: Path) -> None:
        self._config = config
        self._metrics_dir = metrics_dir
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    def start(self) -> None:
        for index in range(self._config.node.ingress_processes):
            self._tasks.append(asyncio.create_task(self._keep(index), name=f"worker-{index}"))

    async def _spawn(self, index: int) -> asyncio.subprocess.Process:
        env = {
            **os.environ,
            CONFIG_ENV: self._config.model_dump_json(),
            METRICS_ENV: str(self._metrics_dir),
            "PYTHONUNBUFFERED": "1",
        }
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "ingress-worker", str(index), env=env
        )

    async def _keep(self, index: int) -> None:
        pause = 1.0
        while not self._stopping:
            proc = self._procs[index] = await self._spawn(index)
            code = await proc.wait()
            if self._stopping:
                return
            event("worker_exited", logging.ERROR, worker=index, code=code, restart_in=pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, MAX_RESTART_PAUSE)

    def signal(self, sig: int) -> None:
        """Pass a signal on to every running worker (SIGHUP: reload keys, TLS, users)."""
        for proc in self._procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs.values() if p.returncode is None]

    async def stop(self, grace: float) -> None:
        """SIGTERM every worker; SIGKILL those still running after `grace`."""
        self._stopping = True
        running = [p for p in self._procs.values() if p.returncode is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        if running:
            await asyncio.wait([asyncio.create_task(p.wait()) for p in running], timeout=grace)
            for proc in running:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
