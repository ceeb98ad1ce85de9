"""Type stubs for the Rust extension (rust/python). Checked by mypy.stubtest."""

from typing import final

__all__ = [
    "MAX_LINE_OCTETS",
    "MessageScan",
    "__version__",
    "dot_stuff",
    "new_queue_id",
    "scan_message",
]

__version__: str
MAX_LINE_OCTETS: int

@final
class MessageScan:
    """Facts about a received message, measured after line-ending normalisation."""

    @property
    def size(self) -> int: ...
    @property
    def lines(self) -> int: ...
    @property
    def bare_lf(self) -> int: ...
    @property
    def bare_cr(self) -> int: ...
    @property
    def longest_line(self) -> int: ...
    @property
    def long_lines(self) -> int: ...
    @property
    def has_8bit(self) -> bool: ...
    @property
    def header_8bit(self) -> bool: ...
    @property
    def has_nul(self) -> bool: ...
    @property
    def body_offset(self) -> int | None: ...

def scan_message(data: bytes) -> tuple[bytes, MessageScan]:
    """Normalise bare CR/LF to CRLF and scan; the GIL is released meanwhile."""

def dot_stuff(data: bytes) -> bytes:
    """The DATA payload: dot-stuffed, ending in CRLF.CRLF; the GIL is released."""

def new_queue_id() -> str:
    """A 16-character queue ID, unique and sortable by creation time."""
