"""What happens to a message between DATA and the spool: normalise, parse,
lint, fix, DKIM-sign.

The work runs on a thread pool. The Rust calls release the GIL, so with two
threads both cores sign while the event loop keeps serving SMTP.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from gateway._core import (
    DkimSignError,
    Finding,
    MessageScan,
    MessageView,
    prepare_message,
    sign_message,
)
from gateway.config import Config
from gateway.dkim import KeyStore
from gateway.log import event
from gateway.metrics import (
    DKIM_SIGN_SECONDS,
    DKIM_SIGNATURES,
    DKIM_UNSIGNED,
    LINT_FINDINGS,
    MESSAGES_REJECTED,
    PREPARE_SECONDS,
)

# Replies for the lint findings an operator may choose to reject (message.reject).
_LINT_REPLIES = {
    "missing-from": "550 5.6.0 Message has no From header (RFC 5322 3.6)",
    "multiple-from": "550 5.6.0 Message must have exactly one From mailbox (RFC 5322 3.6)",
    "duplicate-header": "550 5.6.0 Message repeats a header that may appear once (RFC 5322 3.6)",
    "long-lines": "550 5.6.0 Message has lines longer than 998 octets (RFC 5322 2.1.1)",
    "undeclared-8bit": "550 5.6.0 8-bit content without a declared transfer encoding",
    "non-ascii-header": "550 5.6.7 Non-ASCII headers need SMTPUTF8 (RFC 6531)",
    "nul-byte": "550 5.6.0 Message contains NUL octets",
}
_GENERIC_LINT_REPLY = "550 5.6.0 Message rejected by content policy: {code}"


# Label headers a client may set; they are removed before signing and sending.
TENANT_HEADER = "X-Gateway-Tenant"
CAMPAIGN_HEADER = "X-Gateway-Campaign"
STREAM_HEADER = "X-Gateway-Stream"  # "marketing", "transactional", ...: for policy plugins
LABEL_HEADERS = (TENANT_HEADER, CAMPAIGN_HEADER, STREAM_HEADER)
_LABEL = re.compile(r"[^A-Za-z0-9._-]")
# Messages up to this size are prepared on the event loop: parsing and linting
# them in Rust takes microseconds, less than handing them to a thread.
INLINE_BYTES = 64 * 1024


def _queue_label(value: str | None) -> str:
    """A tenant or campaign name safe for logs and metrics: at most 64 of
    [A-Za-z0-9._-], anything else becoming "-"."""
    return re.sub("-+", "-", _LABEL.sub("-", (value or "").strip())).strip("-")[:64]


def remove_header_fields(data: bytes, names: set[str]) -> bytes:
    """`data` without the top-level header fields named in `names` (with their
    continuation lines); the body is untouched."""
    head, sep, body = data.partition(b"\r\n\r\n")
    wanted = {n.lower().encode() for n in names}
    kept: list[bytes] = []
    dropping = False
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):  # continuation of the previous field
            if not dropping:
                kept.append(line)
            continue
        dropping = line.partition(b":")[0].strip().lower() in wanted
        if not dropping:
            kept.append(line)
    return b"\r\n".join(kept) + sep + body


@functools.lru_cache(maxsize=4)
def message_date(second: int, local: bool = False) -> str:
    """An RFC 5322 date for a whole second: formatted once per second, not per
    message (a Received header on each, a Date header when one is missing)."""
    return email.utils.formatdate(second, localtime=local)


@dataclass
class Prepared:
    """A message ready to spool, or the reply refusing it."""

    data: bytes
    view: MessageView
    scan: MessageScan
    findings: list[Finding]
    signed_by: list[str] = field(default_factory=list)  # "d=... s=..." of each signature
    reply: str | None = None  # set when the message is refused
    unsigned_reason: str | None = None  # no_key or sign_error, when signing was wanted
    tenant: str = ""  # from X-Gateway-Tenant (removed before sending)
    campaign: str = ""  # from X-Gateway-Campaign (removed before sending)
    stream: str = ""  # from X-Gateway-Stream (removed before sending), lower case


class MessagePipeline:
    def __init__(self, config: Config, keys: KeyStore) -> None:
        self._config = config
        self.keys = keys
        threads = config.dkim.threads or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="prepare")

    async def prepare(self, raw: bytes, *, qid: str, smtputf8: bool) -> Prepared:
        """Normalise, parse, lint, fix (on the pool). `reply` is set if lint refuses it."""
        started = time.perf_counter()
        if len(raw) <= INLINE_BYTES:  # microseconds of Rust: a thread hop would cost more
            result = self._prepare(raw, qid, smtputf8)
        else:
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(self._pool, self._prepare, raw, qid, smtputf8)
        PREPARE_SECONDS.observe(time.perf_counter() - started)
        return result

    async def sign(self, result: Prepared, qid: str, add_headers: list[tuple[str, str]]) -> None:
        """Add plugins' header fields and DKIM-sign (on the pool), then account."""
        if self.keys.signers_for(result.view.author_domains):
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._pool, self._sign, result, add_headers)
        else:  # nothing to sign: only header fields to add, no reason for a thread
            self._sign(result, add_headers)
        self._account(result, qid)

    async def process(self, raw: bytes, *, qid: str, smtputf8: bool) -> Prepared:
        """prepare, then sign without added headers (for callers without plugins)."""
        result = await self.prepare(raw, qid=qid, smtputf8=smtputf8)
        if result.reply:
            self._account(result, qid)
            return result
        await self.sign(result, qid, [])
        return result

    def _prepare(self, raw: bytes, qid: str, smtputf8: bool) -> Prepared:
        """Runs on a pool thread (inline for small messages)."""
        message = self._config.message
        prepared = prepare_message(
            raw,
            smtputf8=smtputf8,
            message_id=f"<{qid}@{self._config.node.hostname}>" if message.add_message_id else None,
            date=message_date(int(time.time()), local=True) if message.add_date else None,
        )
        result = Prepared(prepared.data, prepared.view, prepared.scan, prepared.findings)
        labels = {name: prepared.view.get(name) for name in LABEL_HEADERS}
        if any(value is not None for value in labels.values()):
            result.tenant = _queue_label(labels[TENANT_HEADER])
            result.campaign = _queue_label(labels[CAMPAIGN_HEADER])
            result.stream = _queue_label(labels[STREAM_HEADER]).lower()
            result.data = remove_header_fields(result.data, set(LABEL_HEADERS))
        for finding in result.findings:
            if finding.code in message.reject:
                result.reply = _LINT_REPLIES.get(finding.code) or _GENERIC_LINT_REPLY.format(
                    code=finding.code
                )
                return result
        return result

    def _sign(self, result: Prepared, add_headers: list[tuple[str, str]]) -> None:
        """Runs on a pool thread when there is something to sign."""
        if add_headers:
            result.data = (
                b"".join(f"{name}: {value}\r\n".encode() for name, value in add_headers)
                + result.data
            )
        signers = self.keys.signers_for(result.view.author_domains)
        if not signers:
            self._unsigned(result, "no_key", "no DKIM key for the author domain")
            return
        started = time.perf_counter()
        try:
            result.data = sign_message(result.data, signers)
            DKIM_SIGN_SECONDS.observe(time.perf_counter() - started)
        except DkimSignError as exc:
            self._unsigned(result, "sign_error", str(exc))
            return
        result.signed_by = [f"d={s.domain} s={s.selector}" for s in signers]
        for signer in signers:
            DKIM_SIGNATURES.labels(signer.algorithm).inc()

    def _unsigned(self, result: Prepared, reason: str, detail: str) -> Prepared:
        action = self._config.dkim.on_failure
        if not self.keys.signers and reason == "no_key":
            return result  # signing not configured at all: nothing to count
        DKIM_UNSIGNED.labels(reason, action).inc()
        if action == "defer":
            result.reply = f"451 4.7.5 Cannot DKIM-sign the message ({detail}); try again later"
        elif action == "reject":
            result.reply = f"550 5.7.5 Cannot DKIM-sign the message ({detail})"
        result.unsigned_reason = reason
        return result

    def _account(self, result: Prepared, qid: str) -> None:
        for finding in result.findings:
            LINT_FINDINGS.labels(finding.code, "yes" if finding.fixed else "no").inc()
        if result.findings:
            event(
                "lint",
                logging.INFO,
                qid=qid,
                findings=[
                    f"{f.code}{' (fixed)' if f.fixed else ''}: {f.detail}" for f in result.findings
                ],
            )
        reason = result.unsigned_reason
        if reason:
            event(
                "dkim_unsigned",
                logging.WARNING,
                qid=qid,
                reason=reason,
                action=self._config.dkim.on_failure,
                author_domains=result.view.author_domains,
            )
        if result.reply:
            MESSAGES_REJECTED.labels("dkim" if reason else "lint").inc()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
