"""MIME parse throughput: the gateway's Rust parser against Python's `email`.

Each side parses the message and reads what the gateway reads of every
message: Subject, the From addresses, and the content type of every MIME part.
Python's `email` is measured with policy.default and with compat32, in the
same run, on the same machine.

    .venv/bin/python benchmarks/parse_throughput.py [--seconds 2]

Corpora: CPython's Lib/test/test_email/data messages (when this Python has
them), a generated 50 KB multipart/alternative newsletter, and a message with a
1 MB attachment. Every measurement is bounded by --seconds.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import functools
import sysconfig
from collections.abc import Callable
from email.message import Message
from pathlib import Path

from benchmarks.common import newsletter, rate, with_attachment
from gateway import _core


def ours(raw: bytes) -> object:
    view = _core.parse_message(raw)
    return view.subject, view.addresses("From"), [p.content_type for p in view.parts()]


def python_email(policy: email.policy.Policy) -> Callable[[bytes], object]:
    def parse(raw: bytes) -> object:
        msg: Message = email.message_from_bytes(raw, policy=policy)
        subject = str(msg["subject"])
        sender = str(msg["from"])
        return subject, sender, [part.get_content_type() for part in msg.walk()]

    return parse


def one_pass(parse: Callable[[bytes], object], messages: list[bytes]) -> None:
    for m in messages:
        parse(m)


def corpora() -> dict[str, list[bytes]]:
    found: dict[str, list[bytes]] = {}
    data = Path(sysconfig.get_path("stdlib")) / "test" / "test_email" / "data"
    messages = [p.read_bytes() for p in sorted(data.glob("msg_*.txt"))]
    if messages:
        found[f"CPython test_email ({len(messages)} msgs)"] = messages
    found["50 KB newsletter"] = [newsletter()]
    found["1 MB attachment"] = [with_attachment()]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    args = parser.parse_args()
    parsers: dict[str, Callable[[bytes], object]] = {
        "gateway (Rust)": ours,
        "email policy.default": python_email(email.policy.default),
        "email compat32": python_email(email.policy.compat32),
    }
    print(f"{'corpus':34} {'parser':22} {'msgs/s':>10} {'MB/s':>9} {'ours/this':>10}")
    for name, messages in corpora().items():
        size = sum(len(m) for m in messages)

        results = {
            label: rate(functools.partial(one_pass, parse, messages), args.seconds) * len(messages)
            for label, parse in parsers.items()
        }
        mine = results["gateway (Rust)"]
        for label, per_second in results.items():
            mb = per_second * size / len(messages) / 1e6
            print(f"{name:34} {label:22} {per_second:10.0f} {mb:9.1f} {mine / per_second:9.1f}x")


if __name__ == "__main__":
    main()
