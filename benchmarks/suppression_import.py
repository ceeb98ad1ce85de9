"""Import a large suppression CSV through the admin API of a running gateway.

    .venv/bin/python -m benchmarks.suppression_import [--rows 1000000]

The CSV (address, scope, reason) is streamed in one POST to
/suppression/import; the figure is rows per second until the reply (every
row committed to the policy store), plus the gateway's peak memory, since
the store keeps a copy in memory for RCPT lookups. Then a sample of RCPT
checks measures what a suppressed address costs at SMTP time.
"""

from __future__ import annotations

import argparse
import http.client
import os
import smtplib
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway.testing import GatewayProcess


def write_csv(path: Path, rows: int) -> int:
    with path.open("w") as out:
        out.write("address,scope,reason\n")
        for n in range(rows):
            out.write(f"user{n}@d{n % 5000}.example,*,manual\n")
    return path.stat().st_size


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-suppression-") as tmp:
        csv_path = Path(tmp) / "suppressed.csv"
        size = write_csv(csv_path, args.rows)
        config: dict[str, dict[str, Any]] = {
            "plugins": {"enabled": ["suppression"]},
            "log": {"level": "warning"},
        }
        with GatewayProcess(Path(tmp) / "gw", config) as gw:
            before = peak_rss_mb(gw.pid)
            conn = http.client.HTTPConnection("127.0.0.1", gw.admin_port, timeout=3600)
            started = time.perf_counter()
            with csv_path.open("rb") as body:
                conn.request(
                    "POST",
                    "/suppression/import",
                    body=body,
                    headers={
                        "Authorization": f"Bearer {gw.admin_token}",
                        "Content-Length": str(size),
                        "Content-Type": "text/csv",
                    },
                )
                reply = conn.getresponse().read().decode()
            seconds = time.perf_counter() - started
            after = peak_rss_mb(gw.pid)
            checks = 1000
            with smtplib.SMTP("127.0.0.1", gw.port) as client:
                client.ehlo("bench.test")
                client.mail("app@shop.example")
                t0 = time.perf_counter()
                for n in range(checks):
                    client.rcpt(f"user{n * 997 % args.rows}@d{n * 997 % args.rows % 5000}.example")
                rcpt_ms = (time.perf_counter() - t0) / checks * 1000
    print(f"{args.rows:,} rows ({size / 1e6:.0f} MB CSV) imported in {seconds:.1f} s: {reply}")
    print(f"  {args.rows / seconds:,.0f} rows/s")
    print(f"  gateway peak memory {before:.0f} MB before, {after:.0f} MB after")
    print(f"  RCPT of a suppressed address: {rcpt_ms:.2f} ms per command (refused 550)")
    print(f"  ({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
