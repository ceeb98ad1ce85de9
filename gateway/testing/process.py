"""The gateway as a real subprocess with a chosen configuration."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from gateway.config import parse_hostport
from gateway.spool import stored_qids
from gateway.testing.net import free_port, wait_for_port
from gateway.testing.service import Service


def admin_request(
    port: int, token: str, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}"} if token else {},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw, status, kind = (
                response.read(),
                response.status,
                response.headers.get_content_type(),
            )
    except urllib.error.HTTPError as exc:
        raw, status, kind = exc.read(), exc.code, exc.headers.get_content_type()
    return status, json.loads(raw) if kind == "application/json" else raw.decode()


def dump_toml(config: dict[str, Any]) -> str:
    """TOML for a config dict: sections of scalars and lists, nested sections,
    and lists of tables (`[[dkim.keys]]`, `[[webhooks]]`)."""
    lines: list[str] = []

    def is_tables(value: Any) -> bool:
        return isinstance(value, list) and bool(value) and isinstance(value[0], dict)

    def emit(prefix: str, table: dict[str, Any], header: str = "[{}]") -> None:
        lines.append(header.format(prefix))
        nested = {k: v for k, v in table.items() if isinstance(v, dict)}
        arrays = {k: v for k, v in table.items() if is_tables(v)}
        for key, value in table.items():
            if key not in nested and key not in arrays:
                lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
        for key, value in nested.items():
            emit(f"{prefix}.{key}", value)
        for key, items in arrays.items():
            for item in items:
                emit(f"{prefix}.{key}", item, "[[{}]]")

    for section, table in config.items():
        for item in table if is_tables(table) else [table]:  # [[webhooks]]: a list
            emit(section, item, "[[{}]]" if is_tables(table) else "[{}]")
    return "\n".join(lines) + "\n"


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, dict):  # an inline table, e.g. dkim.domain_map
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    # JSON strings, numbers and lists are valid TOML; booleans are spelled alike.
    return str(value).lower() if isinstance(value, bool) else json.dumps(value)


class GatewayProcess(Service):
    """`gateway run` in a subprocess; logs go to `<workdir>/gateway.log`."""

    def __init__(
        self,
        workdir: Path,
        config: dict[str, dict[str, Any]],
        port: int | None = None,
        env: dict[str, str] | None = None,
    ):
        self.workdir = workdir
        self.port = port or free_port()
        self.http_port = free_port()
        self.admin_port = free_port()
        self.admin_token = "test-admin-token"
        self.env = env or {}
        self.config = _merge(
            {
                "node": {"hostname": "gateway.test", "data_dir": str(workdir / "data")},
                "smtp": {"listen": [f"127.0.0.1:{self.port}"]},
                "http": {"listen": f"127.0.0.1:{self.http_port}"},
                "admin": {"listen": f"127.0.0.1:{self.admin_port}", "token": self.admin_token},
                "log": {"level": "debug", "format": "json"},
            },
            config,
        )
        self.http_port = parse_hostport(self.config["http"]["listen"], 8025)[1]
        self.admin_port = parse_hostport(self.config["admin"]["listen"], 8026)[1]
        self.admin_token = self.config["admin"]["token"]
        self.config_path = workdir / "gateway.toml"
        self.log_path = workdir / "gateway.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> GatewayProcess:
        """Start the gateway; already running, do nothing (so `with gw.start():` works)."""
        if self._proc is not None and self._proc.poll() is None:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(dump_toml(self.config))
        log = self.log_path.open("ab")
        offset = log.tell()  # a restart appends: look for its own `started` only
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(self.config_path)],
            stdout=log,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
        )
        log.close()
        try:
            wait_for_port("127.0.0.1", self.port, timeout=20)
            self._wait_started(offset, timeout=20)
        except TimeoutError:
            self.kill()
            raise RuntimeError(f"gateway did not start:\n{self.log_path.read_text()}") from None
        return self

    def _wait_started(self, offset: int, timeout: float) -> None:
        """Until the gateway logs `started` (every listener open); a port that
        answers is not enough, since something else may hold it, or the gateway
        may be about to exit because another of its addresses is taken."""
        log = self.config["log"]
        if log.get("format") != "json" or log.get("level", "info") not in ("debug", "info"):
            return  # `started` is an info line in JSON: this log will not have it
        deadline = time.monotonic() + timeout
        while b'"event": "started"' not in self.log_path.read_bytes()[offset:]:
            assert self._proc is not None
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise TimeoutError
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def stop(self, timeout: float = 40.0) -> int:
        """SIGTERM and wait (SIGKILL if it hangs); returns the exit code."""
        if self._proc is None:
            return 0
        self._proc.send_signal(signal.SIGTERM)
        try:
            code = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            code = self._proc.wait()
        self._proc = None
        return code

    def send_signal(self, sig: int) -> None:
        assert self._proc is not None, "not running"
        self._proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Call the admin API with the token: (HTTP status, decoded JSON or text)."""
        return admin_request(self.admin_port, self.admin_token, method, path, body)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if not self.log_path.exists():
            return out
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and (name is None or record.get("event") == name):
                out.append(record)
        return out

    def wait_event(self, name: str, timeout: float = 15.0, **match: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for record in self.events(name):
                if all(record.get(k) == v for k, v in match.items()):
                    return record
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {name} event matching {match} in {timeout}s")
            time.sleep(0.05)

    def spool_files(self) -> list[str]:
        return stored_qids(Path(self.config["node"]["data_dir"]) / "spool")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
