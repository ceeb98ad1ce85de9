"""Compact JSON for the records made per message: spool envelopes and
journals, accounting lines, a worker's notices to the queue manager.

orjson (maintained, Rust, used by FastAPI and many others) rather than the
standard library's json: here ~10x faster to encode an accounting record and
~3x to decode a notice, and JSON was ~10% of the queue manager's CPU (two
accounting records and a notice per message). The output is what
`json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)`
gives for the types these records hold (tests/test_units.py); NaN becomes
null, as JSON has no NaN.
"""

from __future__ import annotations

from typing import Any

import orjson

_OPTIONS = orjson.OPT_NON_STR_KEYS  # as json.dumps: int keys become strings
_LINE = _OPTIONS | orjson.OPT_APPEND_NEWLINE

loads = orjson.loads  # raises orjson.JSONDecodeError, a ValueError


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=str, option=_OPTIONS)


def dumps_line(value: Any) -> bytes:
    """`value` as one line, newline included."""
    return orjson.dumps(value, default=str, option=_LINE)
