"""Shared pieces of the CPU benchmarks: a time-bounded rate meter and sample messages."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


def rate(work: Callable[[], object], seconds: float, max_calls: int = 1_000_000) -> float:
    """Calls per second of `work`, run for about `seconds` (bounded by max_calls)."""
    work()  # warm up: caches, lazy imports
    calls = 0
    started = time.perf_counter()
    deadline = started + seconds
    while calls < max_calls:
        work()
        calls += 1
        if calls % 8 == 0 and time.perf_counter() >= deadline:
            break
    return calls / (time.perf_counter() - started)


def process_tree(pid: int) -> list[int]:
    """A process and its children (a gateway: its queue manager and ingress workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [pid, *(int(p) for p in children.read_text().split())] if children.exists() else [pid]


def newsletter(size: int = 50_000) -> bytes:
    """A multipart/alternative newsletter of about `size` octets (text + HTML)."""
    paragraph = (
        "Our autumn collection is here: coats, boots and scarves for the cold months, "
        "with free delivery on orders over 50 euros until the end of the month. "
    )
    count = max(1, size // (2 * len(paragraph) + 40))
    text = "\r\n".join(paragraph for _ in range(count))
    html = "\r\n".join(f"<p>{paragraph}</p>" for _ in range(count))
    return (
        'From: "Brand News" <news@brand.example>\r\n'
        "To: reader@example.org\r\n"
        "Subject: Autumn collection\r\n"
        "Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
        "Message-ID: <autumn-1@brand.example>\r\n"
        "List-Unsubscribe: <https://brand.example/u/1>\r\n"
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/alternative; boundary="alt"\r\n'
        "\r\n"
        "--alt\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        f"{text}\r\n"
        "--alt\r\n"
        "Content-Type: text/html; charset=utf-8\r\n"
        "\r\n"
        f"<html><body>{html}</body></html>\r\n"
        "--alt--\r\n"
    ).encode()


def with_attachment(size: int = 1_000_000) -> bytes:
    """A short text message with a base64 attachment of `size` octets."""
    import base64
    import os

    payload = base64.encodebytes(os.urandom(size)).replace(b"\n", b"\r\n")
    return (
        b"From: reports@brand.example\r\n"
        b"To: finance@example.org\r\n"
        b"Subject: Monthly report\r\n"
        b"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
        b"Message-ID: <report-1@brand.example>\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="mix"\r\n'
        b"\r\n"
        b"--mix\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"\r\n"
        b"The report is attached.\r\n"
        b"--mix\r\n"
        b'Content-Type: application/pdf; name="report.pdf"\r\n'
        b'Content-Disposition: attachment; filename="report.pdf"\r\n'
        b"Content-Transfer-Encoding: base64\r\n"
        b"\r\n" + payload + b"--mix--\r\n"
    )
