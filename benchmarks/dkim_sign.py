"""DKIM signing rate: the gateway's Rust signer against dkimpy, and against
the raw RSA-2048 signing rate of the `cryptography` package (OpenSSL), which is
the practical ceiling of this CPU for RSA-SHA256 signatures.

    .venv/bin/python -m benchmarks.dkim_sign [--seconds 2]

RSA-2048 and Ed25519 keys; 4 KB and 100 KB messages; the gateway with one
thread and with two (the Rust signer releases the GIL, so threads scale on
cores). Every measurement is bounded by --seconds.
"""

from __future__ import annotations

import argparse
import base64
import functools
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from benchmarks.common import newsletter, rate
from gateway import _core
from gateway.testing.dkim import write_key

HEADERS = [b"From", b"To", b"Subject", b"Date", b"Message-ID", b"MIME-Version", b"Content-Type"]


def threaded_rate(work: Callable[[], object], threads: int, seconds: float) -> float:
    """Total calls per second of `work` run by `threads` threads at once."""
    if threads == 1:
        return rate(work, seconds)
    counts = [0] * threads
    deadline = time.perf_counter() + seconds

    def loop(slot: int) -> None:
        while time.perf_counter() < deadline:
            work()
            counts[slot] += 1

    work()
    started = time.perf_counter()
    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts) / (time.perf_counter() - started)


def dkimpy_key_of(pem: bytes) -> tuple[bytes, bytes]:
    """dkimpy wants PKCS#1/#8 PEM for RSA and the base64 seed for Ed25519."""
    key = serialization.load_pem_private_key(pem, None)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        seed = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return base64.b64encode(seed), b"ed25519-sha256"
    return pem, b"rsa-sha256"


def dkimpy_sign(message: bytes, key: bytes, algorithm: bytes) -> bytes:
    return bytes(
        dkim.sign(
            message,
            b"bench",
            b"brand.example",
            key,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=HEADERS,
            signature_algorithm=algorithm,
        )
    )


def row(kind: str, message: str, signer: str, per_second: float, note: str = "") -> None:
    print(f"{kind:8} {message:8} {signer:28} {per_second:9.0f} {note:>30}")


def raw_rsa_rate(pem: bytes, seconds: float) -> float:
    key = serialization.load_pem_private_key(pem, None)
    assert isinstance(key, rsa.RSAPrivateKey)
    digest_input = b"x" * 64
    return rate(lambda: key.sign(digest_input, padding.PKCS1v15(), hashes.SHA256()), seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-dkim-"))
    messages = {"4 KB": newsletter(4_000), "100 KB": newsletter(100_000)}
    print(f"{'key':8} {'message':8} {'signer':28} {'sig/s':>9} {'note':>30}")
    for kind in ["rsa2048", "ed25519"]:
        pem = write_key(tmp / f"{kind}.pem", kind).read_bytes()
        # Both sides sign the same headers with relaxed/relaxed.
        headers = [h.decode() for h in HEADERS]
        signer = _core.DkimSigner(pem, "brand.example", "bench", headers=headers)
        dkimpy_key, algorithm = dkimpy_key_of(pem)
        raw = raw_rsa_rate(pem, args.seconds) if kind == "rsa2048" else 0.0
        if raw:
            row(kind, "-", "raw RSA (cryptography)", raw)
        for label, message in messages.items():
            work = functools.partial(signer.sign, message)
            one = threaded_rate(work, 1, args.seconds)
            two = threaded_rate(work, 2, args.seconds)
            dkimpy = rate(
                functools.partial(dkimpy_sign, message, dkimpy_key, algorithm),
                args.seconds,
                max_calls=2000,
            )
            row(kind, label, "gateway, 1 thread", one, f"{one / raw:.0%} of raw RSA" if raw else "")
            row(kind, label, "gateway, 2 threads", two, f"{two / one:.2f}x one thread")
            row(kind, label, "dkimpy", dkimpy, f"gateway {one / dkimpy:.0f}x dkimpy")


if __name__ == "__main__":
    main()
