"""A real Prometheus (Debian's package) scraping chosen targets, for tests
that check what the metrics and the dashboards' queries say."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from gateway.testing.net import free_port, wait_for_port
from gateway.testing.service import Service


class PrometheusServer(Service):
    def __init__(self, targets: list[str], interval: str = "1s") -> None:
        self.targets = targets
        self.interval = interval
        self.port = free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="gateway-prometheus-"))
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrometheusServer:
        config = self._dir / "prometheus.yml"
        config.write_text(
            "global:\n"
            f"  scrape_interval: {self.interval}\n"
            f"  evaluation_interval: {self.interval}\n"
            "scrape_configs:\n"
            "  - job_name: gateway\n"
            f"    static_configs:\n      - targets: {json.dumps(self.targets)}\n"
        )
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        self._proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self._dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(self._dir / "prometheus.log").open("wb"),
        )
        wait_for_port("127.0.0.1", self.port, timeout=30)
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 60.0) -> None:
        """Until /-/ready says 200: the port opens before the storage is ready."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                url = f"http://127.0.0.1:{self.port}/-/ready"
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("Prometheus did not become ready")
            time.sleep(0.2)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (raises on a query error)."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expr}
        )
        with urllib.request.urlopen(url, timeout=10) as response:
            answer = json.loads(response.read())
        if answer.get("status") != "success":
            raise ValueError(f"{expr}: {answer}")
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def wait_for_scrapes(self, metric: str, count: int = 3, timeout: float = 30.0) -> None:
        """Until `metric` has at least `count` samples in the last minute."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.query(f"count_over_time({metric}[1m])")
            if found and float(found[0]["value"][1]) >= count:
                return
            time.sleep(0.5)
        raise TimeoutError(f"Prometheus did not scrape {metric} {count} times")
