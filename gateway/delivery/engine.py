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
import dataclasses
import logging
import socket
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from gateway._core import RateLimiter
from gateway.accounting import account
from gateway.config import Config
from gateway.delivery.automation import ReplyAutomation, ReplyContext
from gateway.delivery.dsn import Failure, build_dsn
from gateway.delivery.egress import Source, SourcePicker
from gateway.delivery.fleet_limits import FleetLimits
from gateway.delivery.holds import Hold, Holds, Scope
from gateway.delivery.idle import IdleSessions
from gateway.delivery.mta_sts import STS_SITE, MtaSts
from gateway.delivery.resolver import DnsError, MxHost, MxResolver, shuffle_equal, site_of
from gateway.delivery.smtp_client import (
    SendResult,
    SmtpConnection,
    SmtpError,
    verifying_context,
)
from gateway.log import event
from gateway.metrics import (
    ATTEMPT_SECONDS,
    BOUNCE_CLASSES,
    MTA_STS_FAILURES,
    QUEUE_SECONDS,
    RECIPIENT_OUTCOMES,
    bounded,
)
from gateway.plugin import Capacity, Delivery, Destination, Route, envelope_info
from gateway.plugin_host import PluginHost
from gateway.scheduler import Job, RetryScheduler
from gateway.shaping import Resolved, load_shaping, provider_of
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


# A session waits this long at most for its lane's rate to allow the next
# message while holding its connection; longer waits end the session.
RATE_WAIT_IN_SESSION = 2.0
# When the fleet holds all of a site's or lane's connections, try again after this.
LEASE_RETRY_SECONDS = 1.0

Lane = tuple[str, str]  # (egress source, site): what rates and connection limits apply to


def _site_key(site: str) -> str:
    """A site's name in the fleet's limits."""
    return f"site:{site}"


RATE_LOWERED = "rate lowered by automation"


class DeliveryEngine:
    def __init__(
        self,
        config: Config,
        spool: Spool,
        resolver: MxResolver,
        plugins: PluginHost | None = None,
    ) -> None:
        self._config = config
        self._plugins = plugins or PluginHost(config, plugins={})
        # The envelope sender for (qid, recipient index) when VERP is on (set by the app).
        self.envelope_sender: Callable[[str, int], str | None] | None = None
        # MTA-STS policies of recipient domains (set by the app; None: not checked).
        self.mta_sts: MtaSts | None = None
        self._verified_tls = verifying_context(config.delivery.ca_file)
        self._node_id = uuid.uuid4().hex[:12]  # names this node's connection leases
        shared = config.store.shared
        self.fleet_limits = FleetLimits(
            config.store.redis_url if shared else None, config.store.redis_prefix
        )
        self._share_lanes = shared and config.delivery.share_lane_limits
        self._machine = socket.gethostname()
        self._spool = spool
        self._resolver = resolver
        self.sources = SourcePicker(config.egress, config.helo_name)
        self._scheduler = RetryScheduler(config.retry)
        self._messages: dict[str, SpooledMessage] = {}
        # Due jobs are routed by domain to their site (MX rollup) and wait in
        # the site's ready queue; sessions run per lane (source, site) and take
        # from it, so a message is bound to whichever source has capacity first.
        self._resolving: dict[str, list[Job]] = {}  # domain -> jobs awaiting its MX lookup
        self._sites: dict[str, list[MxHost]] = {}  # site -> its MX hosts
        self._shaping = load_shaping(config.delivery.shaping_files)
        self._rules: dict[str, Resolved] = {}  # site -> its shaping rules
        # (site, pool) -> due jobs; a session of a pool's source takes from its queue.
        self._ready: dict[tuple[str, str], deque[Job]] = defaultdict(deque)
        self._routes: dict[tuple[str, ...], str] = {}  # delivery_route answers, cached
        self._idle = IdleSessions()  # open connections waiting for mail, by (site, pool)
        self._parked: dict[Scope, list[Job]] = {}  # jobs sent back by a hold, by its scope
        self._inflight: set[tuple[str, int]] = set()  # (qid, recipient index) being tried
        self.holds = Holds()  # suspensions, by operators and automation
        self._automation = ReplyAutomation(self.holds)
        self._message_rates: dict[Lane, RateLimiter] = {}
        self._connection_rates: dict[Lane, RateLimiter] = {}
        self._label_rates: dict[Scope, RateLimiter] = {}  # tenant/campaign lowered by automation
        self._waits: dict[Lane, tuple[float, str]] = {}  # lane -> (may send again at, why)
        self._active: dict[Lane, int] = defaultdict(int)  # open sessions
        self._site_active: dict[str, int] = defaultdict(int)
        self._pool_active: dict[tuple[str, str], int] = defaultdict(int)
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
                        self.holds.next_end(),
                        *(until for until, _ in self._waits.values()),
                    )
                    if t
                ),
                default=None,
            )
            timeout = None if due is None else max(0.0, due - time.time())
            self._wake.clear()
            # asyncio.timeout, not wait_for: no task made per turn of the loop
            # (a turn per message arriving, under a steady load).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    def _route(self, job: Job) -> None:
        """Queue a due job at its domain's site, looking the MX up first if needed."""
        hosts = self._resolver.cached(job.domain)
        if hosts is not None and (self.mta_sts is None or self.mta_sts.fresh(job.domain)):
            self._enqueue(job.domain, hosts, [job])
            return
        waiting = self._resolving.get(job.domain)
        if waiting is not None:
            waiting.append(job)
            return
        self._resolving[job.domain] = [job]
        self._spawn(self._resolve(job.domain), f"resolve:{job.domain}")

    def _enqueue(self, domain: str, hosts: list[MxHost], jobs: list[Job]) -> None:
        policy = self.mta_sts.cached(domain) if self.mta_sts else None
        enforced = policy is not None and policy.mode == "enforce"
        if policy is not None and enforced:
            # Only the MX hosts the policy names, over verified TLS: a site of
            # its own, so domains without the policy keep opportunistic TLS.
            hosts = [h for h in hosts if policy.allows(h.name)]
            if not hosts:
                MTA_STS_FAILURES.labels("mx_mismatch").inc()
                reply = f"MTA-STS: no MX host of {domain} matches its policy"
                for job in jobs:
                    self._spawn(self._fail_job(job, "deferred", "4.7.5", reply, ""), "mta-sts")
                return
        site = site_of(hosts) + (STS_SITE if enforced else "")
        self._sites[site] = hosts
        if site not in self._rules:  # the first domain seen names the site's domain rules
            rules = self._shaping.resolve(domain, [h.name for h in hosts])
            self._rules[site] = dataclasses.replace(rules, tls="verify") if enforced else rules
        now = time.time()
        for job in jobs:
            hold = self._label_hold(site, job, now)
            if hold:
                self._park(job, hold)
                continue
            job.pool = self._route_pool(job, site)
            self._ready[(site, job.pool)].append(job)
            self._idle.arrived((site, job.pool))

    def _route_pool(self, job: Job, site: str) -> str:
        """The egress pool for a job: a plugin's delivery_route, else the default."""
        message = self._messages.get(job.qid)
        if message is None or not self._plugins.has("delivery_route"):
            return ""
        env = message.envelope
        sender_domain = env.sender.rpartition("@")[2].lower()
        key = (sender_domain, env.tenant, env.campaign, env.stream, site)
        pool = self._routes.get(key)
        if pool is None:
            route = self._plugins.first_sync(
                "delivery_route",
                envelope=envelope_info(env),
                destination=Destination(job.domain, site, self._rules[site].provider),
            )
            pool = route.pool if isinstance(route, Route) else ""
            if pool and pool not in self.sources.pools():
                event("route_unknown_pool", logging.ERROR, pool=pool, qid=job.qid)
                pool = ""
            self._routes[key] = pool
        return pool

    async def _resolve(self, domain: str) -> None:
        try:
            hosts = await self._resolver.resolve(domain)
            if self.mta_sts is not None:
                await self.mta_sts.policy(domain)
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

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _dispatch(self) -> None:
        limits = self._config.delivery
        now = time.time()
        self.holds.expire(now)
        self._waits = {lane: w for lane, w in self._waits.items() if w[0] > now}
        for (site, pool), queue in list(self._ready.items()):
            if not queue:
                if not self._pool_active.get((site, pool)):
                    del self._ready[(site, pool)]
                continue
            rules = self._rules[site]
            if self.holds.find(now, site=site, provider=provider_of(rules)):
                continue
            wanted = min(len(queue), limits.max_connections_per_destination)
            site_cap = min(
                limits.max_connections_per_destination,
                rules.site_max_connections or limits.max_connections_per_destination,
            )
            while (
                self._pool_active[(site, pool)] < wanted
                and self._site_active[site] < site_cap
                and self._total_active < limits.max_connections
            ):
                source = self._pick_source(site, rules, now, pool)
                if source is None:
                    break
                self._active[(source.name, site)] += 1
                self._pool_active[(site, pool)] += 1
                self._site_active[site] += 1
                self._total_active += 1
                self._spawn(self._session(site, pool, source), f"deliver:{source.name}:{site}")

    # -- lanes: which source may open a connection to a site, and send on it ----

    def _wait(self, lane: Lane, until: float, why: str) -> None:
        if until > self._waits.get(lane, (0.0, ""))[0]:
            self._waits[lane] = (until, why)
        self._wake.set()

    def _connection_limit(self, lane: Lane, rules: Resolved, now: float) -> int:
        factor = self._automation.lane_connection_factor(self._lane_context(lane), now)
        return max(1, int(rules.max_connections * factor))

    def _pick_source(self, site: str, rules: Resolved, now: float, pool: str = "") -> Source | None:
        """The next source of `pool` (by weight) free to open a connection to `site` now."""

        def usable(source: Source) -> bool:
            lane = (source.name, site)
            if lane in self._waits or self._active[lane] >= self._connection_limit(
                lane, rules, now
            ):
                return False
            if self.holds.find(now, site=site, provider=provider_of(rules), source=source.name):
                return False
            wait, cap = self.sources.cap_wait(source.name, rules.provider, now)
            if wait:
                self._wait(lane, now + wait, cap)
                return False
            return True

        for _ in self.sources.sources:
            source = self.sources.pick(usable, pool)
            if source is None:
                return None
            lane = (source.name, site)
            limiter = self._connection_rates.get(lane)
            if limiter is None:
                limiter = self._connection_rates[lane] = RateLimiter(rules.connection_rate)
            wait = limiter.try_take(now)
            if not wait:
                return source
            self._wait(lane, now + wait, f"connection rate {rules.connection_rate}")
        return None

    def _message_rate(self, lane: Lane, now: float) -> RateLimiter:
        """The lane's message-rate limiter, at the factor automation has it at now."""
        limiter = self._message_rates.get(lane)
        if limiter is None:
            limiter = self._message_rates[lane] = RateLimiter(self._rules[lane[1]].message_rate)
        limiter.set_factor(self._automation.lane_rate_factor(self._lane_context(lane), now))
        return limiter

    def _send_wait(self, lane: Lane, rules: Resolved, now: float) -> tuple[float, str]:
        """Seconds until the lane may send one more message, and what holds it."""
        wait, cap = self.sources.cap_wait(lane[0], rules.provider, now)
        rate_wait = self._message_rate(lane, now).wait(now)
        if rate_wait >= wait:
            return rate_wait, f"message rate {rules.message_rate}"
        return wait, cap

    def _park(self, job: Job, hold: Hold) -> None:
        """Back to the scheduled queue until the hold ends (no attempt counted);
        remembered, so lifting the hold early brings the job back at once."""
        self._scheduler.add(job, hold.until)
        if hold.reason != RATE_LOWERED:
            self._parked.setdefault(hold.scope, []).append(job)

    def _lane_context(self, lane: Lane) -> dict[str, str | None]:
        source, site = lane
        return {"site": site, "provider": provider_of(self._rules[site]), "source": source}

    def _job_context(self, site: str, job: Job) -> dict[str, str | None]:
        """What holds and lowered rates on message labels are matched against."""
        message = self._messages.get(job.qid)
        sender = message.envelope.sender if message else ""
        return {
            "site": site,
            "provider": provider_of(self._rules[site]),
            "tenant": job.tenant or None,
            "campaign": job.campaign or None,
            "sender_domain": sender.rpartition("@")[2].lower() or None,
        }

    def _label_hold(self, site: str, job: Job, now: float) -> Hold | None:
        """A hold or lowered rate on the job's labels (tenant, campaign, sender
        domain) at `site`: until when."""
        if not self.holds and not self._automation.rate_factors:
            return None  # the usual case, on every message: nothing to match
        rules = self._rules[site]
        context = self._job_context(site, job)
        hold = self.holds.find(now, **context)
        if hold and hold.scope.labels_messages:
            return hold
        for scope in self._automation.label_rate_factors(context):
            limiter = self._label_rates.get(scope)
            if limiter is None:
                limiter = self._label_rates[scope] = RateLimiter(rules.message_rate)
            limiter.set_factor(self._automation.rate_factors[scope].value(now))
            wait = limiter.wait(now)
            if wait:
                return Hold(scope, now + wait, RATE_LOWERED)
        return None

    def _take_label_rates(self, site: str, job: Job, now: float) -> None:
        for scope in self._automation.label_rate_factors(self._job_context(site, job)):
            if scope in self._label_rates:
                self._label_rates[scope].try_take(now)

    def _park_held_labels(self) -> None:
        """Move ready jobs of held tenants or campaigns back to the scheduler."""
        now = time.time()
        for (site, _), queue in self._ready.items():
            keep: deque[Job] = deque()
            for job in queue:
                hold = self._label_hold(site, job, now)
                if hold:
                    self._park(job, hold)
                else:
                    keep.append(job)
            queue.clear()  # in place: sessions hold this deque
            queue.extend(keep)

    # -- admin primitives (issue 7 builds the API on them) ----------------------

    def suspend(self, scope: Scope, until: float, reason: str = "suspended by an operator") -> None:
        """Send nothing that `scope` covers until `until`."""
        self.holds.add(scope, until, reason)
        if scope.labels_messages:
            self._park_held_labels()
        self._wake.set()

    def slow(self, scope: Scope, factor: float, clean_period: float) -> None:
        """Lower the rate of what `scope` covers by `factor`, recovering step by step."""
        self._automation.slow(scope, factor, clean_period, time.time())
        self._wake.set()

    def resume(self, scope: Scope) -> bool:
        """Lift a suspension; False if there was none with exactly this scope.
        Jobs parked by it come back now (their old scheduled entries, when they
        fall due, find nothing left to send)."""
        lifted = self.holds.remove(scope)
        now = time.time()
        for job in self._parked.pop(scope, []):
            self._scheduler.add(job, now)
        self._wake.set()
        return lifted

    def queues(self) -> list[dict[str, Any]]:
        """Every site with mail ready or connections open, with its holds and waits."""
        now = time.time()
        rows = []
        ready: dict[str, list[Job]] = defaultdict(list)
        for (site, _), queue in self._ready.items():
            ready[site] += queue
        for site in sorted(set(ready) | {s for s, n in self._site_active.items() if n}):
            rules = self._rules.get(site)
            provider = rules.provider if rules else None
            hold = self.holds.find(now, site=site, provider=provider)
            rows.append(
                {
                    "site": site,
                    "provider": provider,
                    "ready": len(ready[site]),
                    "oldest": self._oldest(ready[site], now),
                    "connections": self._site_active.get(site, 0),
                    "held_until": hold.until if hold else None,
                    "why": f"{hold.reason} ({hold.scope})" if hold else None,
                    "lanes": self._lanes(site),
                }
            )
        return rows

    def _lanes(self, site: str) -> dict[str, dict[str, Any]]:
        """Per source towards `site`: open connections, and what it waits for."""
        names = {src for src, s in (*self._active, *self._waits) if s == site}
        return {
            src: {
                "connections": self._active.get((src, site), 0),
                "waits_until": self._waits.get((src, site), (None, ""))[0],
                "why": self._waits.get((src, site), (None, None))[1],
            }
            for src in sorted(names)
        }

    def _oldest(self, jobs: Iterable[Job], now: float) -> float | None:
        received = [
            self._messages[j.qid].envelope.received_at for j in jobs if j.qid in self._messages
        ]
        return round(now - min(received), 3) if received else None

    def summary(self, by: str) -> list[dict[str, Any]]:
        """Messages and pending recipients in the queue, grouped by `by`: tenant,
        campaign, stream, sender_domain or domain (of the recipients); or, for
        `source`, open connections and what each source waits for."""
        if by == "source":
            rows: dict[str, dict[str, Any]] = {}
            for (source, _), count in self._active.items():
                rows.setdefault(source, {"source": source, "connections": 0, "waiting": []})
                rows[source]["connections"] += count
            for (source, site), (_, why) in self._waits.items():
                row = rows.setdefault(source, {"source": source, "connections": 0, "waiting": []})
                row["waiting"].append(f"{site}: {why}")
            return sorted(rows.values(), key=lambda r: r["source"])
        groups: dict[str, dict[str, Any]] = {}
        for message in self._messages.values():
            env = message.envelope
            pending = [r for r in message.recipients if r.status == "pending"]
            if by == "domain":
                keys = {domain_of(r.address) for r in pending}
            elif by == "sender_domain":
                keys = {env.sender.rpartition("@")[2].lower()}
            elif by in ("tenant", "campaign", "stream"):
                keys = {getattr(env, by)}
            else:
                raise ValueError("by: tenant, campaign, stream, sender_domain, domain or source")
            for key in keys:
                row = groups.setdefault(key, {by: key, "messages": 0, "recipients": 0})
                row["messages"] += 1
                row["recipients"] += sum(
                    1 for r in pending if by != "domain" or domain_of(r.address) == key
                )
        return sorted(groups.values(), key=lambda r: -r["recipients"])

    def matching(self, match: dict[str, str]) -> list[SpooledMessage]:
        """Queued messages matching every given field: qid, sender, sender_domain,
        tenant, campaign, stream, domain (some recipient's)."""
        found = []
        for message in self._messages.values():
            env = message.envelope
            values = {
                "qid": env.qid,
                "sender": env.sender.lower(),
                "sender_domain": env.sender.rpartition("@")[2].lower(),
                "tenant": env.tenant,
                "campaign": env.campaign,
                "stream": env.stream,
            }
            domains = {domain_of(r.address) for r in message.recipients}
            if all(
                (v.lower() in domains) if k == "domain" else values.get(k) == v
                for k, v in match.items()
            ):
                found.append(message)
        return found

    async def drop(self, match: dict[str, str], bounce: bool, reason: str) -> dict[str, Any]:
        """Take matching messages out of the queue: `bounce` fails their pending
        recipients (a DSN goes to the sender), else they are deleted silently.
        Messages being sent right now are left alone and reported as busy."""
        done, busy = [], []
        for message in self.matching(match):
            qid = message.qid
            if any(key[0] == qid for key in self._inflight):
                busy.append(qid)
                continue
            pending = [i for i, r in enumerate(message.recipients) if r.status == "pending"]
            if bounce:
                by_domain: dict[str, list[int]] = defaultdict(list)
                for i in pending:
                    by_domain[domain_of(message.recipients[i].address)].append(i)
                for domain, indices in by_domain.items():
                    outcomes = [Outcome(i, "bounced", "5.3.0", reason, "") for i in indices]
                    await self._complete(message, domain, outcomes, None, "")
            else:
                self._messages.pop(qid, None)
                await self._spool.remove(qid)
            done.append(qid)
            account("admin", action="bounce" if bounce else "delete", qid=qid, reason=reason)
        return {"bounced" if bounce else "deleted": done, "busy": busy}

    def scheduled(self) -> dict[str, Any]:
        """The scheduled queue: jobs waiting for a next attempt, in all and per domain."""
        return {
            "jobs": len(self._scheduler),
            "next_attempt": self._scheduler.next_due(),
            "domains": {
                domain: {"jobs": count, "next_attempt": soonest}
                for domain, (count, soonest) in sorted(self._scheduler.by_domain().items())
            },
        }

    def explain(self, qid: str) -> dict[str, Any] | None:
        """Why a message waits: each recipient's state, its site's rules, holds and waits."""
        message = self._messages.get(qid)
        if message is None:
            return None
        env = message.envelope
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
                    provider=provider_of(rules),
                    message_rate=rules.message_rate,
                    max_connections=rules.max_connections,
                )
                job = Job(qid, domain, [], env.tenant, env.campaign)
                hold = self.holds.find(now, site=site, provider=provider_of(rules))
                hold = hold or self._label_hold(site, job, now)
                if hold:
                    row.update(held_until=hold.until, why=f"{hold.reason} ({hold.scope})")
                waits = {src: why for (src, s), (_, why) in self._waits.items() if s == site}
                if waits:
                    row["source_waits"] = waits
            recipients.append(row)
        return {
            "qid": qid,
            "sender": env.sender,
            "tenant": env.tenant,
            "campaign": env.campaign,
            "recipients": recipients,
        }

    def _automate(self, ctx: ReplyContext, reply: str) -> str | None:
        """Run the site's automation rules over a reply; the action taken, if any."""
        action = self._automation.on_reply(self._rules[ctx.site], ctx, reply, time.time())
        if action == "suspend":
            self._park_held_labels()
        if action:
            self._wake.set()
        return action

    async def stop(self, grace: float) -> None:
        """Start no new sessions; give running ones `grace` seconds, then cancel."""
        self._stopping = True
        self._wake.set()
        self._idle.stop()  # idle connections: QUIT now
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        await self.fleet_limits.close()

    # -- one connection --------------------------------------------------------

    async def _session(self, site: str, pool: str, source: Source) -> None:
        lane = (source.name, site)
        lease = f"{self._node_id}:{id(asyncio.current_task())}"
        fleet_lane = self._lane_key(source, site)
        try:
            await self._session_inner(site, pool, source, lease, fleet_lane)
        except Exception:
            event("delivery_session_error", logging.ERROR, exc=True, site=site)
        finally:
            await self.fleet_limits.release(_site_key(site), lease)
            if self._share_lanes:
                await self.fleet_limits.release(fleet_lane, lease)
            self._active[lane] -= 1
            if not self._active[lane]:
                del self._active[lane]
            self._pool_active[(site, pool)] -= 1
            if not self._pool_active[(site, pool)]:
                del self._pool_active[(site, pool)]
            self._site_active[site] -= 1
            if not self._site_active[site]:
                del self._site_active[site]
            self._total_active -= 1
            self._wake.set()

    def _take_all(self, site: str, pool: str) -> list[Job]:
        queue = self._ready.get((site, pool))
        jobs = list(queue) if queue else []
        if queue:
            queue.clear()
        return jobs

    async def _session_inner(
        self, site: str, pool: str, source: Source, lease: str, fleet_lane: str
    ) -> None:
        """One connection's life. `fleet_lane`: the lane's name in the fleet."""
        rules = self._rules[site]
        lane = (source.name, site)
        now = time.time()
        wait, why = await self._fleet_connection(
            site, lane, fleet_lane, rules, lease, now, opening=True
        )
        if why:
            # The fleet holds all of the site's or lane's connections, or its
            # connection rate is spent: try again then.
            self._wait(lane, now + wait, why)
            return
        conn, host, error, status = await self._connect(site, source, rules)
        if conn is None or host is None:
            for job in self._take_all(site, pool):
                await self._fail_job(job, "deferred", status, error, "")
            return
        per_connection = min(
            self._config.delivery.max_messages_per_connection, rules.max_messages_per_connection
        )
        sent = 0
        queue = self._ready[(site, pool)]
        try:
            while not conn.broken and not self._stopping and sent < per_connection:
                if not queue:
                    await conn.flush()  # a held end of data goes now
                    if await self._more_mail(site, pool):
                        continue
                    break
                now = time.time()
                if self.holds.find(now, site=site, provider=provider_of(rules), source=source.name):
                    break  # suspended while this connection was open
                wait, why = self._send_wait(lane, rules, now)
                if not wait:
                    wait, why = await self._fleet_rate(site, lane, fleet_lane, rules, now)
                if wait > RATE_WAIT_IN_SESSION:
                    # A long wait: free the connection, come back when the lane allows.
                    self._wait(lane, now + wait, why)
                    break
                if wait:
                    await conn.flush()
                    await asyncio.sleep(wait)
                    continue
                await self._fleet_connection(
                    site, lane, fleet_lane, rules, lease, now, opening=False
                )
                job = queue.popleft()
                hold = self._label_hold(site, job, now)
                if hold:
                    self._park(job, hold)
                    self._wake.set()
                    continue
                self._message_rate(lane, now).try_take(now)
                self.sources.take_cap(source.name, rules.provider, now)
                self._take_label_rates(site, job, now)
                if queue and self._config.delivery.pipeline_data_end:
                    # More to send: this one's data end may go with the next's commands.
                    await self._deliver_pipelined(conn, host, job, site)
                else:
                    await self._deliver(conn, host, job, site)
                sent += 1
        finally:
            await conn.quit()

    def _lane_key(self, source: Source, site: str) -> str:
        """A lane's name in the fleet: its address, which nodes sending from it
        share (without one, the OS picks the machine's, so its host name)."""
        return f"lane:{source.address or self._machine + '/' + source.name}:{site}"

    async def _fleet_rate(
        self, site: str, lane: Lane, fleet_lane: str, rules: Resolved, now: float
    ) -> tuple[float, str]:
        """Take one message of the site's and the lane's rates held with other
        nodes: seconds to wait first, and which rate holds it. A site's message
        taken when the lane then says wait is spent: the site's rate errs low."""
        if rules.site_message_rate:
            wait = await self.fleet_limits.reserve(_site_key(site), rules.site_message_rate, now)
            if wait:
                return wait, "site message rate"
        if self._share_lanes and rules.message_rate:
            factor = self._automation.lane_rate_factor(self._lane_context(lane), now)
            wait = await self.fleet_limits.reserve(
                fleet_lane, rules.message_rate, now, factor, local=False
            )
            if wait:
                return wait, f"message rate {rules.message_rate} (fleet)"
        return 0.0, ""

    async def _fleet_connection(
        self,
        site: str,
        lane: Lane,
        fleet_lane: str,
        rules: Resolved,
        lease: str,
        now: float,
        opening: bool,
    ) -> tuple[float, str]:
        """Take or renew this session's leases on the site's and the lane's
        connections held with other nodes, and when `opening`, one of the lane's
        connection rate: (0, "") when held, else when to try again (seconds
        from now) and which limit is full."""
        if rules.site_max_connections and not await self.fleet_limits.lease(
            _site_key(site), rules.site_max_connections, lease, now
        ):
            return LEASE_RETRY_SECONDS, "site connections (fleet)"
        if not self._share_lanes:
            return 0.0, ""
        limit = self._connection_limit(lane, rules, now)
        if not await self.fleet_limits.lease(fleet_lane, limit, lease, now):
            return LEASE_RETRY_SECONDS, "connections (fleet)"
        if opening:
            wait = await self.fleet_limits.reserve(
                f"{fleet_lane}:connect", rules.connection_rate, now, local=False
            )
            if wait:
                return wait, f"connection rate {rules.connection_rate} (fleet)"
        return 0.0, ""

    async def _more_mail(self, site: str, pool: str) -> bool:
        """Keep an idle connection open a moment for more mail to its site (as
        Postfix's connection cache does): True if some arrived in time."""
        idle = self._config.delivery.idle_timeout
        if idle <= 0 or self._stopping:
            return False
        return await self._idle.wait((site, pool), idle)

    async def _connect(
        self, site: str, source: Source, rules: Resolved
    ) -> tuple[SmtpConnection | None, MxHost | None, str, str]:
        """A connection to the first MX host that answers, from `source`, under
        the site's TLS policy and timeouts; else the last error and its status."""
        cfg = self._config.delivery
        timeouts = cfg.timeouts.model_copy(update=rules.timeouts)
        verify = rules.tls == "verify"  # an MTA-STS policy in force
        require_tls = rules.tls in ("required", "verify")
        error, status = "no MX host answered", "4.4.1"
        for host in shuffle_equal(self._sites[site]):
            for address in host.addresses:
                if source.address and (":" in source.address) != (":" in address):
                    continue  # an IPv4 source cannot reach an IPv6 MX, and back
                try:
                    conn = await SmtpConnection.open(
                        address,
                        cfg.port,
                        helo=source.ehlo,
                        timeouts=timeouts,
                        starttls=require_tls or cfg.starttls == "opportunistic",
                        require_tls=require_tls,
                        server_name=host.name,
                        source_address=source.address,
                        verify=self._verified_tls if verify else None,
                    )
                except SmtpError as exc:
                    if verify and exc.status == "4.7.5":
                        MTA_STS_FAILURES.labels("certificate").inc()
                    error = f"{host.name}[{address}]: {exc}"
                    status = exc.status or "4.4.1"
                    event(
                        "connect_failed",
                        logging.WARNING,
                        mx=host.name,
                        ip=address,
                        source=source.name,
                        error=str(exc),
                    )
                    self._plugins.all_sync(
                        "delivery_connect_failed",
                        source=source.name,
                        site=site,
                        host=host.name,
                        error=str(exc),
                    )
                    continue
                conn.source = source.name
                return conn, host, "", ""
        return None, None, error, status

    def _due_recipients(self, job: Job, message: SpooledMessage) -> list[int]:
        """The job's recipients to try now: pending, not being tried by another
        job, and not waiting for a later attempt (a stale entry of a job that
        was parked and brought back early finds nothing here)."""
        soon = time.time() + 1.0
        return [
            i
            for i in job.rcpts
            if message.recipients[i].status == "pending"
            and (job.qid, i) not in self._inflight
            and message.recipients[i].next_attempt <= soon
        ]

    async def _deliver_pipelined(
        self, conn: SmtpConnection, host: MxHost, job: Job, site: str
    ) -> None:
        """_deliver in a task of its own, returning as soon as the connection
        can take the next transaction: the end of this message's data then
        goes in one write with the next one's commands (SmtpConnection.send)."""
        release = asyncio.get_running_loop().create_future()
        task = self._spawn(self._deliver(conn, host, job, site, release), "deliver")
        task.add_done_callback(partial(self._delivered, release))
        await release

    def _delivered(self, release: asyncio.Future[None], task: asyncio.Task[None]) -> None:
        if not release.done():
            release.set_result(None)
        error = None if task.cancelled() else task.exception()
        if error is not None:
            event("delivery_session_error", logging.ERROR, error=repr(error))

    async def _deliver(
        self,
        conn: SmtpConnection,
        host: MxHost,
        job: Job,
        site: str,
        release: asyncio.Future[None] | None = None,
    ) -> None:
        message = self._messages.get(job.qid)
        if message is None:
            return
        indices = self._due_recipients(job, message)
        if not indices:
            return
        trying = {(job.qid, i) for i in indices}
        self._inflight |= trying
        try:
            await self._attempt(conn, host, job, site, message, indices, release)
        finally:
            self._inflight -= trying

    async def _attempt(
        self,
        conn: SmtpConnection,
        host: MxHost,
        job: Job,
        site: str,
        message: SpooledMessage,
        indices: list[int],
        release: asyncio.Future[None] | None = None,
    ) -> None:
        """Sends the message to `indices`; `release`: see SmtpConnection.send
        (only its last transaction's end is held, with VERP)."""
        env = message.envelope
        try:
            body = await self._spool.read_body(job.qid, env.size)
        except OSError as exc:
            await self._fail_job(job, "deferred", "4.3.0", f"spool read failed: {exc}", "")
            return
        # With VERP every recipient gets its own envelope sender, so its own transaction.
        verp = self.envelope_sender
        senders = {i: verp(job.qid, i) for i in indices} if verp and env.sender else {}
        batches = [[i] for i in indices] if any(senders.values()) else [indices]
        outcomes: list[Outcome] = []
        for batch in batches:
            sender = senders.get(batch[0]) or env.sender
            started = time.perf_counter()
            try:
                result = await conn.send(
                    sender,
                    [message.recipients[i].address for i in batch],
                    body,
                    smtputf8=env.smtputf8,
                    body_8bit=env.body_8bit,
                    release=release if batch is batches[-1] else None,
                )
            except SmtpError as exc:
                outcomes += [Outcome(i, "deferred", "4.4.2", str(exc), host.name) for i in batch]
            else:
                outcomes += classify(batch, result, host.name)
            provider = provider_of(self._rules[site])
            ATTEMPT_SECONDS.labels(provider).observe(time.perf_counter() - started)
        await self._complete(
            message, job.domain, outcomes, body, conn.peer, conn.source, site, job.pool
        )

    async def _fail_job(self, job: Job, kind: Kind, status: str, reply: str, remote: str) -> None:
        message = self._messages.get(job.qid)
        if message is None:
            return
        indices = [i for i in job.rcpts if message.recipients[i].status == "pending"]
        outcomes = [Outcome(i, kind, status, reply, remote) for i in indices]
        await self._complete(message, job.domain, outcomes, None, "", pool=job.pool)

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
        pool: str = "",
    ) -> None:
        env = message.envelope
        now = time.time()
        expiry = env.received_at + self._config.retry.max_age
        records: list[dict[str, object]] = []
        failures: list[tuple[dict[str, object], Failure]] = []
        retry_at: float | None = None
        retry: list[int] = []
        deliveries: list[Delivery] = []
        logged: list[tuple[str, dict[str, Any]]] = []  # log lines and accounting entries,
        accounted: list[dict[str, Any]] = []  # written once the outcomes are recorded
        for o in outcomes:
            rcpt = message.recipients[o.index]
            attempts = rcpt.attempts + 1
            record: dict[str, object] = {"i": o.index, "a": attempts, "r": o.reply, "t": now}
            kind: str = o.kind
            status = o.status
            if (
                site
                and kind != "delivered"
                and self._automate(ReplyContext(site, source, env.tenant, env.campaign), o.reply)
                == "bounce"
            ):
                kind, status = "bounced", "5" + status[1:]
            if kind == "deferred" and now >= expiry:
                kind, status = "expired", "4.4.7"
            bounce_class = ""
            if kind != "delivered":
                bounce_class = self._classify(kind, status, o.reply)
                BOUNCE_CLASSES.labels(bounce_class, kind).inc()
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
            if bounce_class:
                fields["bounce_class"] = bounce_class
            RECIPIENT_OUTCOMES.labels(
                kind,
                provider_of(self._rules[site]) if site in self._rules else "none",
                pool or "default",
                source or "none",
                bounded("tenant", env.tenant or "none"),
                bounce_class or "none",
            ).inc()
            if kind != "deferred":
                QUEUE_SECONDS.labels(kind).observe(now - env.received_at)
            if "n" in record:
                fields["next_attempt"] = record["n"]
            logged.append((kind, fields))
            accounted.append(
                dict(
                    kind="transient" if kind == "deferred" else kind,
                    qid=env.qid,
                    time_queued=round(env.received_at, 3),
                    sender=env.sender,
                    recipient=rcpt.address,
                    dsn_action={"delivered": "delivered", "deferred": "delayed"}.get(
                        kind, "failed"
                    ),
                    dsn_status=status,
                    dsn_diag=o.reply,
                    remote_mta=o.remote,
                    remote_ip=peer_ip,
                    source=source,
                    source_ip=self.sources.address_of(source),
                    size=env.size,
                    bounce_class=bounce_class,
                    attempts=attempts,
                    tenant=env.tenant,
                    campaign=env.campaign,
                    message_id=env.message_id,
                    next_attempt=record.get("n"),
                )
            )
            deliveries.append(
                Delivery(
                    qid=env.qid,
                    sender=env.sender,
                    recipient=rcpt.address,
                    index=o.index,
                    kind=kind,  # type: ignore[arg-type]
                    status=status,
                    reply=o.reply,
                    bounce_class=bounce_class,
                    attempts=attempts,
                    domain=domain,
                    site=site,
                    provider=self._rules[site].provider if site in self._rules else None,
                    source=source,
                    tenant=env.tenant,
                    campaign=env.campaign,
                    stream=env.stream,
                )
            )
        if failures and env.sender:
            dsn_qid = await self._send_dsn(message, [f for _, f in failures], body, now)
            for record, _ in failures:
                record["dsn"] = dsn_qid
        for record in records:
            message.apply(record)
        if message.done:
            # Its removal and log lines need not hold up the session: the
            # next message goes out meanwhile (and removals batch up).
            self._spawn(self._record(message, records, logged, accounted, deliveries), "finish")
        else:
            await self._record(message, records, logged, accounted, deliveries)
        if retry and retry_at is not None:
            self._scheduler.add(Job(env.qid, domain, retry, env.tenant, env.campaign), retry_at)
            self._wake.set()

    async def _record(
        self,
        message: SpooledMessage,
        records: list[dict[str, object]],
        logged: list[tuple[str, dict[str, Any]]],
        accounted: list[dict[str, Any]],
        deliveries: list[Delivery],
    ) -> None:
        """Outcomes made durable (the message removed once done), then logged,
        accounted and told to the plugins."""
        env = message.envelope
        try:
            if message.done:  # removing it durably records every outcome at once
                await self._spool.finish(env.qid)
            else:
                await self._spool.record(env.qid, records)
        except (OSError, SpoolError) as exc:
            # The outcome is kept in memory; after a crash it is tried again.
            event("journal_failed", logging.ERROR, qid=env.qid, error=str(exc))
        # Logged once recorded: a "delivered" line means it will not be sent again.
        for kind, fields in logged:
            # Every outcome is in the accounting log; the main log keeps the
            # trouble at warning, and each delivery at debug.
            event(kind, logging.DEBUG if kind == "delivered" else logging.WARNING, **fields)
        for entry in accounted:
            account(**entry)
        self._tell_plugins(deliveries)
        if message.done:
            self._messages.pop(env.qid, None)
            seconds = round(time.time() - env.received_at, 3)
            event("finished", logging.DEBUG, qid=env.qid, seconds_in_queue=seconds)

    def _classify(self, kind: str, status: str, reply: str) -> str:
        """The bounce class of a failed attempt: a plugin's, else from the status."""
        if kind == "expired":
            return "expired"
        found = self._plugins.first_sync("delivery_classify", status=status, reply=reply)
        if isinstance(found, str) and found:
            return found
        return "transient" if status.startswith("4") else "other"

    def _tell_plugins(self, deliveries: list[Delivery]) -> None:
        """delivery_delivered/_deferred/_bounced: synchronous implementations
        now, async ones beside delivery (not awaited here)."""
        for delivery in deliveries:
            hook = {
                "delivered": "delivery_delivered",
                "deferred": "delivery_deferred",
                "bounced": "delivery_bounced",
                "expired": "delivery_bounced",
            }[delivery.kind]
            pending = self._plugins.notify(hook, delivery=delivery)
            if pending is not None:
                self._spawn(pending, hook)

    # -- egress control for plugins (gateway.plugin.Egress) ----------------------

    def source_names(self) -> list[str]:
        return [s.name for s in self.sources.sources]

    def pools(self) -> dict[str, dict[str, int]]:
        return self.sources.pools()

    def set_cap(
        self, source: str, cap: str | Capacity | None, provider: str = "*", name: str = ""
    ) -> None:
        self.sources.set_cap(source, cap, provider, name)
        self._wake.set()

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
