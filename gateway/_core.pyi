"""Type stubs for the Rust extension (rust/python). Checked by mypy.stubtest."""

from collections.abc import Sequence
from typing import final

__all__ = [
    "DEFAULT_SIGNED_HEADERS",
    "LINT_CODES",
    "MAX_LINE_OCTETS",
    "AdaptiveLimit",
    "CoreError",
    "DkimKeyError",
    "DkimSignError",
    "DkimSigner",
    "EventWindow",
    "Finding",
    "MessageScan",
    "MessageView",
    "MimePart",
    "PreparedMessage",
    "RateLimiter",
    "SchedulerQueues",
    "SyncWriter",
    "__version__",
    "dot_stuff",
    "new_queue_id",
    "parse_message",
    "parse_rate",
    "prepare_message",
    "scan_message",
    "sign_message",
]

__version__: str
MAX_LINE_OCTETS: int
DEFAULT_SIGNED_HEADERS: list[str]
LINT_CODES: list[str]

class CoreError(RuntimeError):
    """An internal fault in the Rust core (a bug); the operation did not happen."""

class DkimKeyError(ValueError):
    """A DKIM key or signer setting that cannot be used."""

class DkimSignError(RuntimeError):
    """Signing a message failed."""

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

@final
class MimePart:
    """One node of the MIME tree; parts are numbered depth-first, 0 is the root."""

    @property
    def id(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def content_type(self) -> str: ...
    @property
    def charset(self) -> str | None: ...
    @property
    def disposition(self) -> str | None: ...
    @property
    def filename(self) -> str | None: ...
    @property
    def transfer_encoding(self) -> str | None: ...
    @property
    def size(self) -> int: ...
    @property
    def children(self) -> list[int]: ...

@final
class MessageView:
    """A parsed, read-only message. Values borrow from one copy of the bytes."""

    @property
    def size(self) -> int: ...
    @property
    def raw(self) -> bytes: ...
    @property
    def author_domains(self) -> list[str]: ...
    @property
    def message_id(self) -> str | None: ...
    @property
    def subject(self) -> str | None: ...
    @property
    def date(self) -> int | None: ...
    def headers(self) -> list[tuple[str, bytes, str]]:
        """Every top-level header as (name, raw value, decoded value)."""
    def get(self, name: str) -> str | None:
        """Decoded value of the first header with this name, or None."""
    def get_all(self, name: str) -> list[str]:
        """Decoded values of every header with this name."""
    def addresses(self, field: str) -> list[tuple[str | None, str | None]]:
        """(display name, address) pairs of From, Sender, Reply-To, To or Cc."""
    def parts(self) -> list[MimePart]:
        """The MIME tree flattened depth-first."""
    def part_text(self, part_id: int) -> str | None:
        """Decoded text (UTF-8, from the part's charset) of a text/* part."""
    def part_bytes(self, part_id: int) -> bytes | None:
        """Decoded body of a leaf part; None for multiparts and undecodable bodies."""

@final
class Finding:
    """One lint finding: a code from LINT_CODES, details, and whether it was fixed."""

    @property
    def code(self) -> str: ...
    @property
    def detail(self) -> str: ...
    @property
    def fixed(self) -> bool: ...

@final
class PreparedMessage:
    """A message after prepare_message."""

    @property
    def data(self) -> bytes: ...
    @property
    def view(self) -> MessageView: ...
    @property
    def scan(self) -> MessageScan: ...
    @property
    def findings(self) -> list[Finding]: ...

@final
class DkimSigner:
    """A private key loaded for one (domain, selector), ready to sign."""

    def __new__(
        cls,
        key_pem: bytes,
        domain: str,
        selector: str,
        *,
        headers: Sequence[str] | None = None,
        header_canonicalization: str = "relaxed",
        body_canonicalization: str = "relaxed",
        expiration: int = 0,
    ) -> DkimSigner: ...
    @property
    def domain(self) -> str: ...
    @property
    def selector(self) -> str: ...
    @property
    def algorithm(self) -> str: ...
    @property
    def bits(self) -> int: ...
    @property
    def headers(self) -> list[str]: ...
    def dns_record(self) -> str:
        """The TXT record to publish at <selector>._domainkey.<domain>."""
    def sign(self, data: bytes) -> str:
        """The DKIM-Signature header field for data, ending in CRLF; GIL released."""

def parse_message(data: bytes) -> MessageView:
    """Parse a message; the GIL is released while parsing."""

def prepare_message(
    data: bytes,
    *,
    smtputf8: bool = False,
    message_id: str | None = None,
    date: str | None = None,
) -> PreparedMessage:
    """Normalise, parse, lint, and add Date / Message-ID / MIME-Version when missing."""

def parse_rate(text: str) -> tuple[int, float]:
    """A rate like "100/s" or "2000/h" as (count, period in seconds); ValueError if not."""

def sign_message(data: bytes, signers: Sequence[DkimSigner]) -> bytes:
    """data with one DKIM-Signature per signer prepended; GIL released."""

@final
class EventWindow:
    """Has something happened `count` times within `within` seconds ("N in D")?"""

    def __new__(cls, count: int, within: float) -> EventWindow: ...
    def record(self, now: float) -> bool:
        """Record one event at `now`; True when the threshold is reached."""
    def clear(self) -> None: ...

@final
class AdaptiveLimit:
    """A limit that can be lowered and climbs back step by step after clean periods."""

    def __new__(cls, configured: float, step: float, clean_period: float) -> AdaptiveLimit: ...
    def lower(self, factor: float, now: float) -> None:
        """Multiply the current value by `factor` at `now`."""
    def value(self, now: float) -> float:
        """The value in force at `now`, after the recovery steps that are due."""

@final
class RateLimiter:
    """A GCRA limiter for a rate like "100/s": a burst of N, then one per period/N."""

    def __new__(cls, rate: str, factor: float = 1.0) -> RateLimiter:
        """`rate` like "100/s" multiplied by `factor`, never below one per period."""
    def set_factor(self, factor: float) -> None:
        """Run at the configured rate times `factor` from now on, keeping what was taken."""
    def wait(self, now: float) -> float:
        """Seconds until one event would be allowed at `now`, without taking it."""
    def try_take(self, now: float) -> float:
        """Take one event at `now` (seconds): 0.0 if allowed, else seconds to wait."""

@final
class SchedulerQueues:
    """The scheduler's queues: a timer wheel of next attempts feeding ready
    queues per (source, site, tenant, campaign), drained in turn.

    Times are seconds of the caller's clock; "" means no tenant/campaign.
    """

    def __new__(cls) -> SchedulerQueues: ...
    def __len__(self) -> int: ...
    def insert(
        self,
        qid: str,
        source: str,
        site: str,
        due: float,
        tenant: str = "",
        campaign: str = "",
        attempts: int = 0,
    ) -> int:
        """Queue one message for an attempt at `due`; returns its slot."""
    def insert_many(self, messages: list[tuple[str, str, str, float, str, str, int]]) -> list[int]:
        """Queue many (qid, source, site, due, tenant, campaign, attempts); GIL released."""
    def take_ready(
        self, now: float, max: int
    ) -> list[tuple[int, str, tuple[str, str, str, str], int]]:
        """Up to `max` ready (slot, qid, (source, site, tenant, campaign), attempts),
        keys in turn."""
    def take_ready_slots(self, now: float, max: int) -> list[int]:
        """Like `take_ready`, only the slots (for callers keeping a record per slot)."""
    def finish_many(self, slots: Sequence[int]) -> None:
        """These attempts ended for good; GIL released."""
    def finish(self, slot: int) -> None: ...
    def retry(self, slot: int, due: float) -> None:
        """The attempt was deferred: try again at `due`."""
    def next_due(self) -> float | None: ...
    def memory_per_message(self) -> int:
        """Bytes held per queued message."""

@final
class SyncWriter:
    """Appends and fdatasyncs on a thread of its own that never takes the GIL;
    results are read once `fileno()` is readable (`loop.add_reader`)."""

    def __new__(cls) -> SyncWriter: ...
    def fileno(self) -> int:
        """The descriptor to watch for readability."""
    def submit(self, ticket: int, path: str, data: bytes, sync_dir: str | None = None) -> None:
        """Queue `data` appended to the existing file `path` and synced, after
        an fsync of the directory `sync_dir` when given."""
    def completed(self) -> list[tuple[int, int]]:
        """The jobs done since the last call: (ticket, errno), 0 for success."""
    def close(self) -> None:
        """Finish the queued jobs and stop the thread."""
