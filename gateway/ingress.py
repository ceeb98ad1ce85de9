"""SMTP ingress policy: relay control, recipient checks, and the durable 250.

The reply to DATA is 250 only after the spool has fsynced the message and its
envelope; it carries the queue ID, and so does every log line about it.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.accounting import account
from gateway.auth import Authenticator
from gateway.config import Config
from gateway.feedback.processor import FeedbackIdentity
from gateway.log import event
from gateway.metrics import (
    ACCEPT_SECONDS,
    MESSAGES_RECEIVED,
    POLICY_REFUSALS,
    RECEIVED_BYTES,
    bounded,
)
from gateway.pipeline import MessagePipeline, Prepared, message_date
from gateway.plugin import Decision, EnvelopeInfo, MessageInfo, SessionInfo
from gateway.plugin_host import PluginHost
from gateway.smtp_server import GatewayEnvelope, peer_ip, session_info
from gateway.spool import Envelope as SpoolEnvelope
from gateway.spool import Spool, SpooledMessage, SpoolError
from gateway.store import PolicyStore

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# The queue ID in our 250 reply to DATA ("250 2.0.0 Ok: queued as QID").
QUEUED_AS = re.compile(r"queued as ([0-9A-Z]{16})")


@dataclass
class Submission:
    """A message handed to us, by SMTP or over HTTP: who sent it, to whom."""

    sender: str  # "" for <>
    recipients: list[str]
    session: SessionInfo
    smtputf8: bool = False
    protocol: str = ""  # for the Received header; "" means (UTF8)ESMTP


def _sender(envelope: Envelope) -> str:
    """The envelope sender, "" for the null sender <>."""
    return _address(envelope.mail_from or "")


def _address(address: str) -> str:
    return "" if address in ("<>", "") else address.strip("<>")


NO_SPACE = "452 4.3.1 Insufficient system storage; try again later"
# How long a reading of the spool's free space may answer for MAIL commands
# (a statvfs per MAIL was ~1.5% of an ingress worker); refusals always read anew.
FREE_SPACE_FRESH_SECONDS = 0.1
RELAY_ANSWERS_KEPT = 10_000  # client IPs whose relay_networks answer is kept


def _declared_size(options: list[str]) -> int:
    """The SIZE= parameter of MAIL FROM (RFC 1870), 0 if absent or unreadable."""
    for option in options:
        name, _, value = option.partition("=")
        if name.upper() == "SIZE" and value.isdigit():
            return int(value)
    return 0


class IngressHandler:
    """aiosmtpd hooks: relay control, recipient limits, durable queueing."""

    def __init__(
        self,
        config: Config,
        spool: Spool,
        received: Callable[[SpooledMessage, list[str]], None],
        pipeline: MessagePipeline,
        plugins: PluginHost | None = None,
        feedback: FeedbackIdentity | None = None,
        store: PolicyStore | None = None,
    ) -> None:
        self._config = config
        self._plugins = plugins or PluginHost(config, plugins={})
        self.auth = Authenticator(config.smtp.auth, self._plugins, store)
        self._feedback = feedback
        self._spool = spool
        self._pipeline = pipeline
        # A message spooled (with the DKIM signatures added): schedule it and
        # write its `received` accounting record.
        self._received = received
        self._networks: list[Network] = [
            ipaddress.ip_network(n, strict=False) for n in config.smtp.relay_networks
        ]
        self.in_data = 0
        self._free = (0, -FREE_SPACE_FRESH_SECONDS)  # spool bytes free, when read
        self._relay_answers: dict[str, bool] = {}  # client IP -> in relay_networks

    def may_relay(self, session: Session) -> str | None:
        """None if this client may relay, else the refusal: authenticated
        users may; so may the relay networks unless [smtp.auth] required."""
        if session.authenticated:
            return None
        if self.auth.enabled and (
            self._config.smtp.auth.required or not self.relay_allowed(peer_ip(session))
        ):
            return "530 5.7.0 Authentication required"
        if not self.relay_allowed(peer_ip(session)):
            return "550 5.7.1 Relaying denied: client not authorized"
        return None

    def _room_for(self, size: int) -> bool:
        """Whether the spool has room for a message of `size` and the reserve."""
        wanted = self._config.smtp.min_free_space + size
        free, read_at = self._free
        now = time.monotonic()
        if free >= wanted and now - read_at < FREE_SPACE_FRESH_SECONDS:
            return True
        try:
            free = self._spool.free_space()
        except OSError:
            return True  # cannot tell: let the write itself decide
        self._free = (free, now)
        if free >= wanted:
            return True
        event("spool_low_space", logging.WARNING, free=free, wanted=size)
        return False

    def relay_allowed(self, ip: str) -> bool:
        # Asked at every MAIL and RCPT; parsing the address was ~2% of a worker.
        allowed = self._relay_answers.get(ip)
        if allowed is None:
            if len(self._relay_answers) >= RELAY_ANSWERS_KEPT:
                self._relay_answers.clear()
            allowed = self._relay_answers[ip] = self._in_relay_networks(ip)
        return allowed

    def _in_relay_networks(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self._networks)

    async def handle_exception(self, error: Exception) -> str:
        """A bug or an unexpected fault in a session: temporary failure, never a crash."""
        event("session_error", logging.ERROR, exc=True, error=repr(error))
        return "451 4.3.0 Internal error; try again later"

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        if not self.auth.enabled:  # aiosmtpd offers AUTH once TLS is up
            responses = [r for r in responses if not r.startswith("250-AUTH")]
        last = responses.pop()  # "250 HELP"
        responses += ["250-PIPELINING", "250-ENHANCEDSTATUSCODES", last]
        return responses

    async def _decide(self, stage: str, hook: str, **kwargs: Any) -> str | None:
        """A plugin's refusal as an SMTP reply, or None to go on."""
        decision = await self._plugins.first(hook, **kwargs)
        if isinstance(decision, Decision) and decision.action != "accept":
            POLICY_REFUSALS.labels(stage, str(decision.code)).inc()
            return str(decision)
        return None

    async def on_connect(self, session: Session) -> str | None:
        if not self._plugins.has("smtp_connect"):
            return None
        refusal = await self._decide("connect", "smtp_connect", session=session_info(session))
        if refusal:
            event("rejected", logging.WARNING, reason=refusal, client=peer_ip(session))
        return refusal

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address != "<>" and address and "@" not in address:
            return "553 5.1.7 Sender address must be user@domain or <>"
        if not self._room_for(_declared_size(options)):
            return NO_SPACE
        refusal = await self._decide(
            "mail",
            "smtp_mail_from",
            session=session_info(session),
            envelope=EnvelopeInfo(sender=_address(address)),
        )
        if refusal:
            event("rejected", logging.WARNING, reason=refusal, client=peer_ip(session))
            return refusal
        envelope.mail_from = address  # "<>" stays truthy: aiosmtpd tests it before RCPT
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        assert isinstance(envelope, GatewayEnvelope)
        ip = peer_ip(session)
        if self._feedback and self._feedback.accepts(address):
            # Bounces and complaints to us: taken from anyone, never relayed.
            if envelope.feedback is False:
                return "452 4.5.3 Send reports to us in a transaction of their own"
            envelope.feedback = True
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 OK"
        if envelope.feedback:
            return "452 4.5.3 Send reports to us in a transaction of their own"
        reply = self.may_relay(session)
        if reply:
            envelope.rejected_rcpts += 1
            event("rejected", logging.WARNING, reason="relay_denied", client=ip, rcpt=address)
            account("rejected", stage="rcpt", client_ip=ip, recipient=address, reply=reply)
            return reply
        local, _, domain = address.rpartition("@")
        if not local or not domain or "." not in domain.strip("[]"):
            envelope.rejected_rcpts += 1
            return "501 5.1.3 Bad recipient address syntax"
        if len(envelope.rcpt_tos) >= self._config.smtp.max_recipients:
            return "452 4.5.3 Too many recipients"
        so_far = Submission(_sender(envelope), list(envelope.rcpt_tos), session_info(session))
        refusal = await self.check_recipient(so_far, address)
        if refusal:
            envelope.rejected_rcpts += 1
            event("rejected", logging.WARNING, reason=refusal, client=ip, rcpt=address)
            account(
                "rejected",
                stage="rcpt",
                client_ip=ip,
                sender=_sender(envelope),
                recipient=address,
                reply=refusal,
            )
            return refusal
        envelope.feedback = False
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.in_data += 1
        try:
            return await self._queue(session, envelope)
        finally:
            self.in_data -= 1

    async def _queue(self, session: Session, envelope: Envelope) -> str:
        raw: bytes = envelope.original_content or b""
        if isinstance(envelope, GatewayEnvelope) and envelope.feedback and self._feedback:
            try:
                return await self._feedback.receive(list(envelope.rcpt_tos), raw)
            except Exception:
                event("feedback_error", logging.ERROR, exc=True, client=peer_ip(session))
                return "451 4.3.0 Could not process the report; try again later"
        submission = Submission(
            sender=_sender(envelope),
            recipients=list(envelope.rcpt_tos),
            session=session_info(session),
            smtputf8=bool(envelope.smtp_utf8),
        )
        return await self.accept(submission, raw)

    async def check_recipient(self, submission: Submission, recipient: str) -> str | None:
        """The plugins' refusal of one recipient (RCPT time), or None."""
        return await self._decide(
            "rcpt",
            "smtp_rcpt_to",
            session=submission.session,
            envelope=EnvelopeInfo(
                sender=submission.sender, recipients=tuple(submission.recipients)
            ),
            recipient=recipient,
        )

    async def accept(self, submission: Submission, raw: bytes) -> str:
        """Prepare, check, sign and spool a message whose recipients were
        accepted; the final reply (250 with the queue ID, or a refusal)."""
        started = time.perf_counter()
        qid = self._spool.new_qid()
        ip, helo = submission.session.client_ip, submission.session.helo
        sender, recipients = submission.sender, submission.recipients
        prepared = await self._pipeline.prepare(raw, qid=qid, smtputf8=submission.smtputf8)
        # An authenticated user's tenant and stream win over the headers, so
        # one tenant cannot send as another.
        prepared.tenant = submission.session.tenant or prepared.tenant
        prepared.stream = submission.session.stream or prepared.stream
        if not prepared.reply:
            prepared.reply = await self._message_policy(submission, prepared, qid)
        if prepared.reply:
            event("rejected", logging.WARNING, qid=qid, client=ip, reason=prepared.reply)
            account(
                "rejected",
                stage="data",
                qid=qid,
                client_ip=ip,
                sender=sender,
                recipients=recipients,
                reply=prepared.reply,
            )
            return prepared.reply
        scan = prepared.scan
        now = time.time()
        trace = _received_header(self._config.node.hostname, submission, qid, now)
        data = trace + prepared.data
        spooled = SpoolEnvelope(
            qid=qid,
            sender=sender,
            recipients=list(recipients),
            received_at=now,
            client_ip=ip,
            helo=helo,
            size=len(data),
            smtputf8=submission.smtputf8,
            body_8bit=scan.has_8bit,
            tenant=prepared.tenant,
            campaign=prepared.campaign,
            stream=prepared.stream,
            message_id=prepared.view.message_id or "",
        )
        try:
            location = await self._spool.store(spooled, data)
        except SpoolError as exc:
            event("spool_failed", logging.ERROR, qid=qid, error=str(exc), full=exc.no_space)
            if exc.no_space:
                self._free = (0, -FREE_SPACE_FRESH_SECONDS)  # the next MAIL reads anew
                return NO_SPACE
            return "451 4.3.0 Temporary failure storing the message; try again later"
        self._received(SpooledMessage.fresh(spooled, location), prepared.signed_by)
        event(
            "received",
            logging.DEBUG,  # the accounting log has every reception
            qid=qid,
            client=ip,
            helo=helo,
            sender=spooled.sender,
            rcpts=len(spooled.recipients),
            size=spooled.size,
            bare_lf=scan.bare_lf,
            bare_cr=scan.bare_cr,
            long_lines=scan.long_lines,
            message_id=prepared.view.message_id,
            dkim=prepared.signed_by,
            tenant=prepared.tenant,
            campaign=prepared.campaign,
            stream=prepared.stream,
        )
        ACCEPT_SECONDS.observe(time.perf_counter() - started)
        MESSAGES_RECEIVED.labels(bounded("tenant", prepared.tenant or "none")).inc()
        RECEIVED_BYTES.inc(spooled.size)
        return f"250 2.0.0 Ok: queued as {qid}"

    async def _message_policy(
        self, submission: Submission, prepared: Prepared, qid: str
    ) -> str | None:
        """smtp_data decides; message_headers add fields; then the message is signed.
        The refusal reply, or None."""
        info = EnvelopeInfo(
            sender=submission.sender,
            recipients=tuple(submission.recipients),
            qid=qid,
            stream=prepared.stream,
            tenant=prepared.tenant,
            campaign=prepared.campaign,
        )
        message = MessageInfo(
            headers=tuple((name, value) for name, _, value in prepared.view.headers()),
            from_domains=tuple(prepared.view.author_domains),
        )
        refusal = await self._decide(
            "data", "smtp_data", session=submission.session, envelope=info, message=message
        )
        if refusal:
            return refusal
        added: list[tuple[str, str]] = [self._feedback.id_header(qid)] if self._feedback else []
        for fields in await self._plugins.all("message_headers", envelope=info, message=message):
            added += [(str(name), str(value)) for name, value in fields]
        if self._plugins.has("message_check"):
            final = MessageInfo(
                headers=(*added, *message.headers), from_domains=message.from_domains
            )
            signers = self._pipeline.keys.signers_for(list(message.from_domains))
            refusal = await self._decide(
                "data",
                "message_check",
                envelope=info,
                message=final,
                signing_domains=tuple(sorted({s.domain for s in signers})),
            )
            if refusal:
                return refusal
        await self._pipeline.sign(prepared, qid, added)
        return prepared.reply


def _received_header(hostname: str, submission: Submission, qid: str, now: float) -> bytes:
    """RFC 5321 §4.4 trace header, prepended to every relayed message."""
    protocol = submission.protocol or ("UTF8SMTP" if submission.smtputf8 else "ESMTP")
    recipients = submission.recipients
    rcpt = f"\r\n\tfor <{recipients[0]}>" if len(recipients) == 1 else ""
    helo, ip = submission.session.helo, submission.session.client_ip
    line = (
        f"Received: from {helo or 'unknown'} ([{ip}])\r\n"
        f"\tby {hostname} (Deliverability Gateway) with {protocol} id {qid}{rcpt};\r\n"
        f"\t{message_date(int(now))}\r\n"
    )
    return line.encode("utf-8")
