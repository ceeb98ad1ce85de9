"""The delivery engine: turns spooled messages into SMTP transactions.

Each message is split into jobs per destination domain. Jobs wait in the
scheduler until due, then in a ready queue per domain; a session task per
connection (up to the per-destination and global limits) resolves the MX,
connects, and delivers ready jobs one after another over that connection.
Every outcome is journalled in the spool before the message is forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import defaultdict, deque
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Literal

from gateway._core import AdaptiveLimit, EventWindow, RateLimiter
from gateway.config import Config
from gateway.delivery.dsn import Failure, build_dsn
from gateway.delivery.egress import SourcePicker
from gateway.delivery.resolver import DnsError, MxHost, MxResolver, shuffle_equal, site_of
from gateway.delivery.smtp_client import SendResult, SmtpConnection, SmtpError
from gateway.log import event
from gateway.scheduler import Job, RetryScheduler
from gateway.shaping import Resolved, load_shaping, parse_trigger
from gateway.spool import Envelope, RecipientState, Spool, SpooledMessage, SpoolError

Kind = Literal["delivered", "bounced", "deferred"]


@dataclass(frozen=True)
class Outcome:
    index: int
    kind: Kind
    status: str  # enhanced status code
    reply: str
    remote: str = ""


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


def classify(indices: list[int], result: SendResult, remote: str) -> list[Outcome]:
    """Per-recipient outcome from the RCPT replies and the final DATA reply."""
    outcomes = []
    for index, reply in zip(indices, result.rcpts, strict=True):
        final = reply if not reply.ok or result.data is None else result.data
        if final.ok:
            kind: Kind = "delivered"
        elif final.permanent:
            kind = "bounced"
        else:
            kind = "deferred"
        default = {"delivered": "2.0.0", "bounced": "5.0.0", "deferred": "4.0.0"}[kind]
        outcomes.append(Outcome(index, kind, final.enhanced or default, str(final), remote))
    return outcomes


# After an automation rule lowers a rate or connection limit, each clean
# `duration` gives back this share of the configured value.
RECOVERY_STEP = 0.25

# A session waits this long at most for its site's rate to allow the next
# message while holding its connection; longer waits end the session.
RATE_WAIT_IN_SESSION = 2.0


class DeliveryEngine:
    def __init__(self, config: Config, spool: Spool, resolver: MxResolver) -> None:
        self._config = config
        self._spool = spool
        self._resolver = resolver
        self.sources = SourcePicker(config.egress, config.helo_name)
        self._scheduler = RetryScheduler(config.retry)
        self._messages: dict[str, SpooledMessage] = {}
        # Due jobs are routed by domain to their site (MX rollup); sessions,
        # connection limits and ready queues are per site.
        self._resolving: dict[str, list[Job]] = {}  # domain -> jobs awaiting its MX lookup
        self._sites: dict[str, list[MxHost]] = {}  # site -> its MX hosts
        self._shaping = load_shaping(config.delivery.shaping_files)
        self._rules: dict[str, Resolved] = {}  # site -> its shaping rules
        self._limiters: dict[tuple[str, str], tuple[float, RateLimiter]] = {}  # (source, site)
        self._held_until: dict[str, float] = {}  # site -> when it may send again (rate, suspension)
        self._hold_reason: dict[str, str] = {}  # site -> why it is held
        self._provider_holds: dict[str, float] = {}  # provider -> suspended until (admin)
        # Automation state: reply windows per (site, rule), and the factors that
        # reduce a site's rate or connections and recover step by step.
        self._windows: dict[tuple[str, int], EventWindow] = {}
        self._rate_factor: dict[str, AdaptiveLimit] = {}
        self._connection_factor: dict[str, AdaptiveLimit] = {}
        self._ready: dict[str, deque[Job]] = defaultdict(deque)  # site -> due jobs
        self._active: dict[str, int] = defaultdict(int)  # site -> open sessions
        self._total_active = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stopping = False

    # -- intake --------------------------------------------------------------

    def submit(self, message: SpooledMessage) -> None:
        """Schedule every pending recipient of a spooled message, grouped by domain."""
        self._messages[message.qid] = message
        groups: dict[tuple[str, float], list[int]] = defaultdict(list)
        for index, rcpt in enumerate(message.recipients):
            if rcpt.status == "pending":
                groups[(domain_of(rcpt.address), rcpt.next_attempt)].append(index)
        env = message.envelope
        for (domain, at), indices in groups.items():
            self._scheduler.add(Job(message.qid, domain, indices, env.tenant, env.campaign), at)
        self._wake.set()

    @property
    def queued_messages(self) -> int:
        return len(self._messages)

    # -- the loop ------------------------------------------------------------

    async def run(self) -> None:
        while not self._stopping:
            for job in self._scheduler.pop_due(time.time()):
                self._route(job)
            self._dispatch()
            due = min(
                (
                    t
                    for t in (
                        self._scheduler.next_due(),
                        *self._held_until.values(),
                        *self._provider_holds.values(),
                    )
                    if t
                ),
                default=None,
            )
            timeout = None if due is None else max(0.0, due - time.time())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _route(self, job: Job) -> None:
        """Queue a due job at its domain's site, looking the MX up first if needed."""
        hosts = self._resolver.cached(job.domain)
        if hosts is not None:
            self._enqueue(job.domain, hosts, [job])
            return
        waiting = self._resolving.get(job.domain)
        if waiting is not None:
            waiting.append(job)
            return
        self._resolving[job.domain] = [job]
        self._spawn(self._resolve(job.domain), f"resolve:{job.domain}")

    def _enqueue(self, domain: str, hosts: list[MxHost], jobs: list[Job]) -> None:
        site = site_of(hosts)
        self._sites[site] = hosts
        if site not in self._rules:  # the first domain seen names the site's domain rules
            self._rules[site] = self._shaping.resolve(domain, [h.name for h in hosts])
        self._ready[site].extend(jobs)

    async def _resolve(self, domain: str) -> None:
        try:
            hosts = await self._resolver.resolve(domain)
        except DnsError as exc:
            kind: Kind = "bounced" if exc.permanent else "deferred"
            for job in self._resolving.pop(domain, []):
                await self._fail_job(job, kind, exc.status, str(exc), "")
            return
        except Exception:
            event("delivery_session_error", logging.ERROR, exc=True, domain=domain)
            for job in self._resolving.pop(domain, []):
                await self._fail_job(job, "deferred", "4.4.3", "MX lookup failed", "")
            return
        finally:
            self._wake.set()
        self._enqueue(domain, hosts, self._resolving.pop(domain, []))

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _dispatch(self) -> None:
        limits = self._config.delivery
        now = time.time()
        self._held_until = {s: t for s, t in self._held_until.items() if t > now}
        self._hold_reason = {s: r for s, r in self._hold_reason.items() if s in self._held_until}
        self._provider_holds = {p: t for p, t in self._provider_holds.items() if t > now}
        for site in list(self._ready):
            queue = self._ready[site]
            if not queue:
                if not self._active.get(site):
                    del self._ready[site]
                continue
            rules = self._rules[site]
            if site in self._held_until or self._provider_held(rules.provider, now):
                continue
            allowed = rules.max_connections
            if site in self._connection_factor:
                allowed = max(1, int(allowed * self._connection_factor[site].value(time.time())))
            wanted = min(len(queue), limits.max_connections_per_destination, allowed)
            while (
                self._active.get(site, 0) < wanted and self._total_active < limits.max_connections
            ):
                self._active[site] += 1
                self._total_active += 1
                self._spawn(self._session(site), f"deliver:{site}")

    # -- admin primitives (issue 7 builds the API on them) ----------------------

    def _hold(self, site: str, until: float, reason: str) -> None:
        if until > self._held_until.get(site, 0.0):
            self._held_until[site] = until
            self._hold_reason[site] = reason
        self._wake.set()

    def _provider_held(self, provider: str | None, now: float) -> bool:
        return provider is not None and self._provider_holds.get(provider, 0.0) > now

    def suspend(self, scope: Literal["site", "provider"], name: str, until: float) -> None:
        """Send nothing to a site, or to every site of a provider, until `until`."""
        if scope == "site":
            self._hold(name, until, "suspended by an operator")
        else:
            self._provider_holds[name] = until
            self._wake.set()

    def resume(self, scope: Literal["site", "provider"], name: str) -> None:
        if scope == "site":
            self._held_until.pop(name, None)
            self._hold_reason.pop(name, None)
        else:
            self._provider_holds.pop(name, None)
        self._wake.set()

    def queues(self) -> list[dict[str, Any]]:
        """Every site with mail ready or connections open."""
        now = time.time()
        rows = []
        for site in sorted(set(self._ready) | set(self._active)):
            rules = self._rules.get(site)
            held = self._held_until.get(site, 0.0)
            provider = rules.provider if rules else None
            if self._provider_held(provider, now):
                held = max(held, self._provider_holds[provider or ""])
            rows.append(
                {
                    "site": site,
                    "provider": provider,
                    "ready": len(self._ready.get(site, ())),
                    "connections": self._active.get(site, 0),
                    "held_until": held if held > now else None,
                    "why": self._hold_reason.get(site, "provider suspended")
                    if held > now
                    else None,
                }
            )
        return rows

    def explain(self, qid: str) -> dict[str, Any] | None:
        """Why a message waits: each recipient's state and its site's limits and holds."""
        message = self._messages.get(qid)
        if message is None:
            return None
        now = time.time()
        recipients = []
        for rcpt in message.recipients:
            domain = domain_of(rcpt.address)
            hosts = self._resolver.cached(domain)
            site = site_of(hosts) if hosts else None
            rules = self._rules.get(site) if site else None
            row: dict[str, Any] = {
                "rcpt": rcpt.address,
                "status": rcpt.status,
                "attempts": rcpt.attempts,
                "next_attempt": rcpt.next_attempt if rcpt.status == "pending" else None,
                "site": site,
            }
            if site and rules:
                row.update(
                    provider=rules.provider,
                    message_rate=rules.message_rate,
                    max_connections=rules.max_connections,
                )
                if self._held_until.get(site, 0.0) > now:
                    row.update(held_until=self._held_until[site], why=self._hold_reason[site])
                elif self._provider_held(rules.provider, now):
                    row.update(
                        held_until=self._provider_holds[rules.provider or ""],
                        why="provider suspended by an operator",
                    )
            recipients.append(row)
        return {"qid": qid, "sender": message.envelope.sender, "recipients": recipients}

    def _limiter(self, source: str, site: str) -> RateLimiter:
        """The (source, site) rate limiter, at the site's rate as automation has it now."""
        factor = self._rate_factor[site].value(time.time()) if site in self._rate_factor else 1.0
        known = self._limiters.get((source, site))
        if known and known[0] == factor:
            return known[1]
        limiter = RateLimiter(self._rules[site].message_rate, factor)
        self._limiters[(source, site)] = (factor, limiter)
        return limiter

    def _automate(self, site: str, reply: str) -> str | None:
        """Run the site's automation rules over one reply; the action taken, if any."""
        now = time.time()
        for index, rule in enumerate(self._rules[site].automation):
            if not re.search(rule.match, reply):
                continue
            window = self._windows.get((site, index))
            if window is None:
                count, within = parse_trigger(rule.trigger)
                window = self._windows[(site, index)] = EventWindow(count, within)
            if not window.record(now):
                continue
            window.clear()
            if rule.action == "suspend":
                self._hold(site, now + rule.duration, f"automation: {rule.match} -> suspend")
            elif rule.action in ("reduce-rate", "reduce-connections"):
                factors = (
                    self._rate_factor if rule.action == "reduce-rate" else self._connection_factor
                )
                factor = factors.get(site)
                if factor is None:
                    factor = factors[site] = AdaptiveLimit(1.0, RECOVERY_STEP, rule.duration)
                factor.lower(rule.factor, now)
            event(
                "automation",
                logging.WARNING,
                site=site,
                rule=rule.match,
                action=rule.action,
                duration=rule.duration,
            )
            return rule.action
        return None

    async def stop(self, grace: float) -> None:
        """Start no new sessions; give running ones `grace` seconds, then cancel."""
        self._stopping = True
        self._wake.set()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)

    # -- one connection --------------------------------------------------------

    async def _session(self, site: str) -> None:
        try:
            await self._session_inner(site)
        except Exception:
            event("delivery_session_error", logging.ERROR, exc=True, site=site)
        finally:
            self._active[site] -= 1
            if not self._active[site]:
                del self._active[site]
            self._total_active -= 1
            self._wake.set()

    def _take_all(self, site: str) -> list[Job]:
        queue = self._ready.get(site)
        jobs = list(queue) if queue else []
        if queue:
            queue.clear()
        return jobs

    async def _session_inner(self, site: str) -> None:
        conn, host, error = await self._connect(shuffle_equal(self._sites[site]))
        if conn is None or host is None:
            for job in self._take_all(site):
                await self._fail_job(job, "deferred", "4.4.1", error, "")
            return
        rules = self._rules[site]
        per_connection = min(
            self._config.delivery.max_messages_per_connection, rules.max_messages_per_connection
        )
        limiter = self._limiter(conn.source, site)
        sent = 0
        queue = self._ready[site]
        try:
            while queue and not conn.broken and not self._stopping:
                if sent >= per_connection:
                    break
                wait = limiter.try_take(time.monotonic())
                if wait > RATE_WAIT_IN_SESSION:
                    # A long wait: free the connection, come back when the rate allows.
                    self._hold(site, time.time() + wait, f"rate {rules.message_rate}")
                    break
                if wait:
                    await asyncio.sleep(wait)
                    continue
                await self._deliver(conn, host, queue.popleft(), site)
                sent += 1
        finally:
            await conn.quit()

    async def _connect(
        self, hosts: list[MxHost]
    ) -> tuple[SmtpConnection | None, MxHost | None, str]:
        cfg = self._config
        error = "no MX host answered"
        source = self.sources.pick()
        for host in hosts:
            for address in host.addresses:
                if source and (":" in source.address) != (":" in address):
                    continue  # an IPv4 source cannot reach an IPv6 MX, and back
                try:
                    conn = await SmtpConnection.open(
                        address,
                        cfg.delivery.port,
                        helo=source.ehlo if source else cfg.helo_name,
                        timeouts=cfg.delivery.timeouts,
                        starttls=cfg.delivery.starttls == "opportunistic",
                        server_name=host.name,
                        source_address=source.address if source else None,
                    )
                except SmtpError as exc:
                    error = f"{host.name}[{address}]: {exc}"
                    event(
                        "connect_failed", logging.WARNING, mx=host.name, ip=address, error=str(exc)
                    )
                    continue
                conn.source = source.name if source else ""
                return conn, host, ""
        return None, None, error

    async def _deliver(self, conn: SmtpConnection, host: MxHost, job: Job, site: str) -> None:
        message = self._messages.get(job.qid)
        if message is None:
            return
        indices = [i for i in job.rcpts if message.recipients[i].status == "pending"]
        if not indices:
            return
        env = message.envelope
        try:
            body = await self._spool.read_body(job.qid)
        except OSError as exc:
            await self._fail_job(job, "deferred", "4.3.0", f"spool read failed: {exc}", "")
            return
        try:
            result = await conn.send(
                env.sender,
                [message.recipients[i].address for i in indices],
                body,
                smtputf8=env.smtputf8,
                body_8bit=env.body_8bit,
            )
        except SmtpError as exc:
            outcomes = [Outcome(i, "deferred", "4.4.2", str(exc), host.name) for i in indices]
        else:
            outcomes = classify(indices, result, host.name)
        await self._complete(message, job.domain, outcomes, body, conn.peer, conn.source, site)

    async def _fail_job(self, job: Job, kind: Kind, status: str, reply: str, remote: str) -> None:
        message = self._messages.get(job.qid)
        if message is None:
            return
        indices = [i for i in job.rcpts if message.recipients[i].status == "pending"]
        outcomes = [Outcome(i, kind, status, reply, remote) for i in indices]
        await self._complete(message, job.domain, outcomes, None, "")

    # -- outcomes --------------------------------------------------------------

    async def _complete(
        self,
        message: SpooledMessage,
        domain: str,
        outcomes: list[Outcome],
        body: bytes | None,
        peer_ip: str,
        source: str = "",
        site: str = "",
    ) -> None:
        env = message.envelope
        now = time.time()
        expiry = env.received_at + self._config.retry.max_age
        records: list[dict[str, object]] = []
        failures: list[tuple[dict[str, object], Failure]] = []
        retry_at: float | None = None
        retry: list[int] = []
        for o in outcomes:
            rcpt = message.recipients[o.index]
            attempts = rcpt.attempts + 1
            record: dict[str, object] = {"i": o.index, "a": attempts, "r": o.reply, "t": now}
            kind: str = o.kind
            status = o.status
            if site and kind != "delivered" and self._automate(site, o.reply) == "bounce":
                kind, status = "bounced", "5" + status[1:]
            if kind == "deferred" and now >= expiry:
                kind, status = "expired", "4.4.7"
            if kind == "deferred":
                at = min(now + self._scheduler.backoff(attempts), expiry)
                record.update(s="pending", n=at)
                retry.append(o.index)
                retry_at = at if retry_at is None else min(retry_at, at)
            else:
                record["s"] = kind
            if kind in ("bounced", "expired"):
                failures.append((record, Failure(rcpt.address, status, o.reply, o.remote, now)))
            records.append(record)
            fields: dict[str, Any] = {
                "qid": env.qid,
                "rcpt": rcpt.address,
                "domain": domain,
                "mx": o.remote,
                "ip": peer_ip,
                "status": status,
                "reply": o.reply,
                "attempts": attempts,
                "delay": round(now - env.received_at, 3),
            }
            if source:
                fields["source"] = source
            if "n" in record:
                fields["next_attempt"] = record["n"]
            event(kind, logging.INFO if kind == "delivered" else logging.WARNING, **fields)
        if failures and env.sender:
            dsn_qid = await self._send_dsn(message, [f for _, f in failures], body, now)
            for record, _ in failures:
                record["dsn"] = dsn_qid
        try:
            await self._spool.record(env.qid, records)
        except OSError as exc:
            # The outcome is kept in memory; after a crash it is tried again.
            event("journal_failed", logging.ERROR, qid=env.qid, error=str(exc))
        for record in records:
            message.apply(record)
        if retry and retry_at is not None:
            self._scheduler.add(Job(env.qid, domain, retry, env.tenant, env.campaign), retry_at)
            self._wake.set()
        if message.done:
            await self._spool.remove(env.qid)
            self._messages.pop(env.qid, None)
            event("finished", qid=env.qid, seconds_in_queue=round(now - env.received_at, 3))

    async def _send_dsn(
        self, message: SpooledMessage, failures: list[Failure], body: bytes | None, now: float
    ) -> str:
        env = message.envelope
        if body is None:
            try:
                body = await self._spool.read_body(env.qid)
            except OSError:
                body = b""
        hostname = self._config.node.hostname
        data = build_dsn(env, body, failures, reporting_mta=hostname, now=now)
        dsn_env = Envelope(
            qid=self._spool.new_qid(),
            sender="",
            recipients=[env.sender],
            received_at=now,
            helo=hostname,
            size=len(data),
            smtputf8=any(not f.recipient.isascii() for f in failures),
        )
        try:
            await self._spool.store(dsn_env, data)
        except SpoolError as exc:
            event("dsn_failed", logging.ERROR, qid=env.qid, error=str(exc))
            return ""
        self.submit(SpooledMessage(dsn_env, [RecipientState(env.sender)]))
        event("dsn_queued", qid=dsn_env.qid, original=env.qid, rcpt=env.sender)
        return dsn_env.qid
