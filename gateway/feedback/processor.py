"""An inbound report → the message and recipient it is about → what follows.

Mail to `feedback.bounce_domain` is read as bounces, mail to
`feedback.fbl_addresses` as complaints. The sent message is found by, in
order: the VERP address it came back to (names message and recipient), the
X-Gateway-Id header in the returned original (names the message; the
report names the recipient), and for complaints a VERP address in the
original's Return-Path or Original-Mail-From.

A permanent bounce is classed (`delivery_classify`) and handed to the
`delivery_bounced` hook (suppression acts on hard classes); a complaint to
`feedback_complaint` (suppression, warm-up) and to complaint-rate throttling.
Both are logged (`async_bounce`, `complaint`) and counted. The core listens
to deliveries as an internal plugin, to remember what was sent and count the
complaint rates' denominators.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from gateway.accounting import account
from gateway.config import FeedbackConfig
from gateway.feedback.complaints import ComplaintMonitor, Throttle
from gateway.feedback.reports import ComplaintReport, parse_bounce, parse_complaint
from gateway.feedback.sent import SentIndex
from gateway.feedback.tokens import (
    derive_secret,
    message_id_token,
    read_message_id_token,
    read_verp,
    verp_address,
)
from gateway.log import event
from gateway.metrics import BOUNCE_CLASSES, COMPLAINTS, FEEDBACK_REPORTS
from gateway.plugin import Delivery, hookimpl
from gateway.plugin_host import PluginHost
from gateway.store import PolicyStore

ID_HEADER = "X-Gateway-Id"
_ID_LINE = re.compile(rb"^X-Gateway-Id:[ \t]*(\S+)", re.MULTILINE | re.IGNORECASE)


class FeedbackIdentity:
    """Our feedback addresses and the tokens that tie reports to what we sent:
    all an ingress process needs to know which mail is a report for us."""

    def __init__(self, config: FeedbackConfig, hostname: str) -> None:
        self._config = config
        self._secret = derive_secret(config.secret, hostname)
        self._fbl = {a.lower() for a in config.fbl_addresses}
        self._bounce_domain = config.bounce_domain.lower()

    @property
    def enabled(self) -> bool:
        return bool(self._bounce_domain or self._fbl)

    def id_header(self, qid: str) -> tuple[str, str]:
        return ID_HEADER, message_id_token(self._secret, qid)

    def envelope_sender(self, qid: str, index: int) -> str | None:
        """The VERP envelope sender for a recipient, when VERP is on."""
        if not self._config.verp:
            return None
        return verp_address(self._secret, qid, index, self._bounce_domain)

    def accepts(self, address: str) -> bool:
        """Is this a feedback address of ours (taken from anyone, never relayed)?"""
        address = address.strip("<>").lower()
        domain = address.rpartition("@")[2]
        return address in self._fbl or bool(self._bounce_domain and domain == self._bounce_domain)

    async def receive(self, recipients: list[str], raw: bytes) -> str:
        """Process one inbound report; the SMTP reply."""
        raise NotImplementedError


class FeedbackLoop(FeedbackIdentity):
    def __init__(
        self,
        config: FeedbackConfig,
        hostname: str,
        store: PolicyStore,
        plugins: PluginHost,
        throttle: Throttle,
    ) -> None:
        super().__init__(config, hostname)
        self._plugins = plugins
        self.sent = SentIndex(store, config.remember)
        self.complaints = ComplaintMonitor(config, throttle, store)

    # -- what comes back ------------------------------------------------------------

    async def receive(self, recipients: list[str], raw: bytes) -> str:
        """Process one inbound report; the SMTP reply."""
        for rcpt in recipients:
            if rcpt.strip("<>").lower() in self._fbl:
                await self._complaint(raw)
            else:
                await self._bounce(rcpt, raw)
        return "250 2.0.0 Report received"

    def _qid_from_original(self, report_original: Any, raw: bytes) -> str | None:
        """The X-Gateway-Id of the returned original: its parsed headers, or for
        formats that paste it in as text (qmail, Exim), a line of the report."""
        value = report_original.get(ID_HEADER) if report_original is not None else None
        if not value:
            found = _ID_LINE.search(raw)
            value = found.group(1).decode("ascii", "replace") if found else None
        return read_message_id_token(self._secret, str(value)) if value else None

    async def _bounce(self, rcpt: str, raw: bytes) -> None:
        report = parse_bounce(raw)
        if report is None:
            FEEDBACK_REPORTS.labels("bounce", "unreadable").inc()
            event("feedback_unreadable", logging.WARNING, kind="bounce", rcpt=rcpt)
            return
        verp = read_verp(self._secret, rcpt)
        qid = verp[0] if verp else self._qid_from_original(report.original, raw)
        sent = self.sent.lookup(qid) if qid else None
        for status in report.recipients:
            recipient = status.recipient
            if verp and sent and not recipient:
                recipient = _nth_recipient(sent, verp[1])
            if not qid or sent is None or not recipient:
                FEEDBACK_REPORTS.labels("bounce", "unmatched").inc()
                event("feedback_unmatched", logging.WARNING, kind="bounce", format=report.format)
                continue
            FEEDBACK_REPORTS.labels("bounce", "matched").inc()
            await self._bounced(
                qid, sent, recipient, status.status, status.diagnostic, status.action
            )

    async def _bounced(
        self, qid: str, sent: dict[str, Any], recipient: str, status: str, reply: str, action: str
    ) -> None:
        permanent = status.startswith("5") and action in ("failed", "")
        found = self._plugins.first_sync("delivery_classify", status=status, reply=reply)
        bounce_class = found if isinstance(found, str) and found else "other"
        BOUNCE_CLASSES.labels(bounce_class, "async").inc()
        route = sent["rcpts"].get(recipient.lower(), {})
        event(
            "async_bounce",
            logging.WARNING,
            qid=qid,
            rcpt=recipient,
            status=status,
            reply=reply,
            bounce_class=bounce_class,
            permanent=permanent,
            source=route.get("source", ""),
        )
        account(
            "remote_bounce",
            qid=qid,
            sender=sent["sender"],
            recipient=recipient,
            dsn_action=action or "failed",
            dsn_status=status,
            dsn_diag=reply,
            source=route.get("source", ""),
            bounce_class=bounce_class,
            tenant=sent.get("tenant", ""),
            campaign=sent.get("campaign", ""),
        )
        if not permanent:
            return  # a delayed-delivery notice: nothing to act on
        delivery = Delivery(
            qid=qid,
            sender=sent["sender"],
            recipient=recipient,
            kind="bounced",
            status=status,
            reply=reply,
            bounce_class=bounce_class,
            attempts=0,
            domain=recipient.rpartition("@")[2].lower(),
            provider=route.get("provider"),
            source=route.get("source", ""),
            tenant=sent.get("tenant", ""),
            campaign=sent.get("campaign", ""),
            stream=sent.get("stream", ""),
        )
        await self._plugins.all("delivery_bounced", delivery=delivery)

    async def _complaint(self, raw: bytes) -> None:
        report = parse_complaint(raw)
        if report is None:
            FEEDBACK_REPORTS.labels("complaint", "unreadable").inc()
            event("feedback_unreadable", logging.WARNING, kind="complaint")
            return
        qid, recipient, sent = self._match_complaint(report, raw)
        if qid is None or sent is None or not recipient:
            FEEDBACK_REPORTS.labels("complaint", "unmatched").inc()
            event("feedback_unmatched", logging.WARNING, kind="complaint", ua=report.user_agent)
            return
        FEEDBACK_REPORTS.labels("complaint", "matched").inc()
        route = sent["rcpts"].get(recipient.lower(), {})
        source, provider = route.get("source", ""), route.get("provider")
        sender_domain = sent["sender"].rpartition("@")[2].lower()
        COMPLAINTS.labels(sender_domain, sent.get("tenant", ""), source, provider or "other").inc()
        event(
            "complaint",
            logging.WARNING,
            qid=qid,
            rcpt=recipient,
            feedback_type=report.feedback_type,
            sender_domain=sender_domain,
            source=source,
            provider=provider,
        )
        account(
            "feedback",
            qid=qid,
            sender=sent["sender"],
            recipient=recipient,
            feedback_type=report.feedback_type,
            user_agent=report.user_agent,
            source=source,
            provider=provider,
            tenant=sent.get("tenant", ""),
            campaign=sent.get("campaign", ""),
        )
        self.complaints.complaint(sender_domain, source, provider, time.time())
        await self._plugins.all(
            "feedback_complaint",
            recipient=recipient,
            sender_domain=sender_domain,
            source=source,
            qid=qid,
        )

    def _match_complaint(
        self, report: ComplaintReport, raw: bytes
    ) -> tuple[str | None, str, dict[str, Any] | None]:
        original = report.original
        verp = read_verp(self._secret, report.original_mail_from)
        if verp is None and original is not None:
            verp = read_verp(self._secret, str(original.get("Return-Path", "")))
        qid = verp[0] if verp else self._qid_from_original(original, raw)
        sent = self.sent.lookup(qid) if qid else None
        recipient = report.recipient
        if sent and not recipient:
            recipient = _nth_recipient(sent, verp[1]) if verp else _only_recipient(sent)
        return qid, recipient, sent

    # -- the core's own hook implementations --------------------------------------

    @hookimpl
    def delivery_delivered(self, delivery: Delivery) -> None:
        if self.enabled:  # without feedback addresses no report can come back
            self.sent.delivered(delivery)
        self.complaints.delivered(
            delivery.sender_domain, delivery.source, delivery.provider, time.time()
        )


def _only_recipient(sent: dict[str, Any]) -> str:
    rcpts = list(sent["rcpts"])
    return rcpts[0] if len(rcpts) == 1 else ""


def _nth_recipient(sent: dict[str, Any], index: int) -> str:
    """The recipient at envelope position `index` (from a VERP address)."""
    return next((r for r, route in sent["rcpts"].items() if route.get("i") == index), "")
