"""A real DNS server for tests: NSD (Debian package `nsd`) on a loopback port.

Zones are given as record lines relative to the zone origin; a zone listed in
`servfail` is configured with an unloadable file, so NSD answers SERVFAIL for it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import dns.exception
import dns.resolver

from gateway.testing.net import free_port
from gateway.testing.service import Service

_SOA = "@ IN SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 60\n@ IN NS ns.{zone}.\n"


class DnsServer(Service):
    def __init__(
        self,
        zones: dict[str, list[str]],
        servfail: list[str] | None = None,
        address: str = "127.0.0.1",
        port: int | None = None,
    ) -> None:
        self.zones = zones
        self.servfail = servfail or []
        self.address = address
        self.port = port or free_port(address)
        self._dir = Path(tempfile.mkdtemp(prefix="gateway-dns-"))
        self._proc: subprocess.Popen[bytes] | None = None

    def _write_config(self) -> Path:
        d = self._dir
        conf = [
            "server:",
            f"  ip-address: {self.address}@{self.port}",
            '  username: ""',
            '  chroot: ""',
            f'  zonesdir: "{d}"',
            f'  pidfile: "{d}/nsd.pid"',
            f'  xfrdfile: "{d}/xfrd.state"',
            f'  zonelistfile: "{d}/zone.list"',
            f'  logfile: "{d}/nsd.log"',
            "  server-count: 1",
            "  verbosity: 1",
            "remote-control:",
            "  control-enable: no",
        ]
        for zone, records in self.zones.items():
            body = f"$ORIGIN {zone}.\n$TTL 5\n" + _SOA.format(zone=zone) + "\n".join(records)
            (d / f"{zone}.zone").write_text(body + "\n")
            conf += ["zone:", f"  name: {zone}", f"  zonefile: {zone}.zone"]
        for zone in self.servfail:
            (d / f"{zone}.zone").write_text("this is not a zone\n")
            conf += ["zone:", f"  name: {zone}", f"  zonefile: {zone}.zone"]
        path = d / "nsd.conf"
        path.write_text("\n".join(conf) + "\n")
        return path

    def start(self) -> DnsServer:
        nsd = shutil.which("nsd") or "/usr/sbin/nsd"
        conf = self._write_config()
        self._proc = subprocess.Popen(
            [nsd, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 10.0) -> None:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [self.address]
        resolver.port = self.port
        resolver.lifetime = 0.5
        zone = next(iter(self.zones))
        deadline = time.monotonic() + timeout
        while True:
            try:
                resolver.resolve(zone, "SOA")
                return
            except dns.exception.DNSException:
                if self._proc is not None and self._proc.poll() is not None:
                    log = (self._dir / "nsd.log").read_text(errors="replace")
                    raise RuntimeError(f"nsd exited: {log}") from None
                if time.monotonic() > deadline:
                    raise TimeoutError("nsd did not answer in time") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        shutil.rmtree(self._dir, ignore_errors=True)
