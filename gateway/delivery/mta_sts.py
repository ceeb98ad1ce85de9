"""MTA-STS (RFC 8461): a recipient domain's published demand for TLS with a
valid certificate, and the MX hosts it allows.

The TXT record `_mta-sts.DOMAIN` says a policy exists and its id; the policy
itself is fetched over HTTPS (certificate checked, no redirects, at most
64 KiB) from `https://mta-sts.DOMAIN/.well-known/mta-sts.txt` and kept for
its `max_age`, in memory and in the policy store, so a restart or a policy
host that is down does not drop protection. The TXT record is looked at
again every `recheck` seconds; a new id fetches the policy again.

Under an `enforce` policy mail goes only to MX hosts the policy names, over
TLS whose certificate is valid for the MX host name; otherwise it waits
(4.7.5) rather than going in the clear. A `testing` policy is logged and not
enforced (reports, RFC 8460, are not sent). No policy, or one that cannot be
fetched with none cached: delivery as without MTA-STS, as the RFC says.

Written here rather than taken from a library: the one maintained
implementation (postfix-mta-sts-resolver) is a Postfix daemon, not an API;
the protocol is small, and the DNS lookups must go through the gateway's own
resolver (aiohttp is given it, so mta-sts.DOMAIN resolves like the MX hosts).
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from gateway.config import MtaStsConfig
from gateway.delivery.resolver import DnsError, MxResolver
from gateway.log import event
from gateway.store import PolicyStore

NAMESPACE = "mta-sts"
MAX_POLICY_BYTES = 64 * 1024
MAX_AGE_LIMIT = 31_557_600  # one year, the RFC's ceiling
STS_SITE = "+mta-sts"  # suffix of the site of MX hosts reached under a policy
Mode = Literal["enforce", "testing", "none"]


@dataclass(frozen=True)
class Policy:
    id: str
    mode: Mode
    mx: tuple[str, ...]
    max_age: int
    fetched_at: float

    @property
    def expires_at(self) -> float:
        return self.fetched_at + self.max_age

    def allows(self, host: str) -> bool:
        """Whether `host` matches one of the policy's mx patterns (RFC 8461
        §4.1: `*.example.com` stands for exactly one label)."""
        host = host.lower().rstrip(".")
        for pattern in self.mx:
            if pattern.startswith("*."):
                label, _, rest = host.partition(".")
                if label and rest == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False


class PolicyError(ValueError):
    pass


def parse_policy(text: str, policy_id: str, now: float) -> Policy:
    """A policy file's fields (RFC 8461 §3.2); PolicyError if it is not one."""
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), []).append(value.strip())
    if fields.get("version") != ["STSv1"]:
        raise PolicyError("version is not STSv1")
    mode = (fields.get("mode") or [""])[0]
    if mode not in ("enforce", "testing", "none"):
        raise PolicyError(f"bad mode {mode!r}")
    try:
        max_age = int((fields.get("max_age") or [""])[0])
    except ValueError:
        raise PolicyError("max_age is not a number") from None
    if not 0 <= max_age <= MAX_AGE_LIMIT:
        raise PolicyError("max_age out of range")
    mx = tuple(p.lower().rstrip(".") for p in fields.get("mx", []))
    if mode != "none" and not mx:
        raise PolicyError("no mx patterns")
    return Policy(policy_id, mode, mx, max_age, now)  # type: ignore[arg-type]


def parse_txt(records: list[str]) -> str | None:
    """The id of the one `v=STSv1` record, or None (none, or several: RFC §3.1)."""
    found = [r for r in records if r.replace(" ", "").startswith("v=STSv1;")]
    if len(found) != 1:
        return None
    for part in found[0].split(";"):
        key, _, value = part.strip().partition("=")
        if key == "id" and value.isalnum() and len(value) <= 32:
            return value
    return None


class _GatewayResolver(AbstractResolver):
    """aiohttp looks host names up through the gateway's DNS configuration."""

    def __init__(self, dns: MxResolver) -> None:
        self._dns = dns

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            addresses = await self._dns.addresses(host)
        except DnsError as exc:
            raise OSError(str(exc)) from None
        if not addresses:
            raise OSError(f"{host} has no address")
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        pass


class MtaSts:
    def __init__(
        self, config: MtaStsConfig, dns: MxResolver, store: PolicyStore, tls: ssl.SSLContext
    ) -> None:
        self._config = config
        self._dns = dns
        self._store = store
        self._tls = tls  # verifies certificates (the system's CAs or delivery.ca_file)
        self._checked: dict[str, float] = {}  # domain -> when the TXT record was last read
        self._policies: dict[str, Policy | None] = {}  # read from the store once per domain

    def cached(self, domain: str) -> Policy | None:
        """The unexpired policy on record for `domain`, without a lookup."""
        if domain in self._policies:
            policy = self._policies[domain]
        else:
            record = self._store.get(NAMESPACE, domain)
            policy = Policy(**{**record, "mx": tuple(record["mx"])}) if record else None
            self._policies[domain] = policy
        return policy if policy is not None and policy.expires_at > time.time() else None

    def fresh(self, domain: str) -> bool:
        """Whether `cached(domain)` is up to date (no lookup needed now)."""
        checked = self._checked.get(domain)
        return checked is not None and time.monotonic() - checked < self._config.recheck

    async def policy(self, domain: str) -> Policy | None:
        """The policy that applies to mail for `domain` now, or None."""
        if not self._config.enabled:
            return None
        cached = self.cached(domain)
        if self.fresh(domain):
            return cached
        try:
            records = await self._dns.txt(f"_mta-sts.{domain}")
        except DnsError:
            return cached  # cannot tell: keep what we have, look again later
        self._checked[domain] = time.monotonic()
        policy_id = parse_txt(records or [])
        if policy_id is None or (cached is not None and cached.id == policy_id):
            return cached
        try:
            policy = await self._fetch(domain, policy_id)
        except (OSError, aiohttp.ClientError, TimeoutError, PolicyError, UnicodeError) as exc:
            event("mta_sts_fetch_failed", logging.WARNING, domain=domain, error=str(exc))
            return cached
        await self._store.put(NAMESPACE, domain, _record(policy), policy.expires_at)
        self._policies[domain] = policy
        if policy.mode == "testing":
            event("mta_sts_testing", domain=domain, note="policy in testing mode: not enforced")
        event("mta_sts_policy", domain=domain, mode=policy.mode, mx=list(policy.mx))
        return policy

    async def _fetch(self, domain: str, policy_id: str) -> Policy:
        url = f"https://mta-sts.{domain}:{self._config.port}/.well-known/mta-sts.txt"
        if self._config.port == 443:
            url = f"https://mta-sts.{domain}/.well-known/mta-sts.txt"
        connector = aiohttp.TCPConnector(resolver=_GatewayResolver(self._dns), ssl=self._tls)
        timeout = aiohttp.ClientTimeout(total=self._config.fetch_timeout)
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
            session.get(url, allow_redirects=False) as response,
        ):
            if response.status != 200:
                raise PolicyError(f"{url} answered {response.status}")
            body = await response.content.read(MAX_POLICY_BYTES + 1)
        if len(body) > MAX_POLICY_BYTES:
            raise PolicyError(f"{url}: policy larger than 64 KiB")
        return parse_policy(body.decode("utf-8"), policy_id, time.time())


def _record(policy: Policy) -> dict[str, Any]:
    record = asdict(policy)
    record["mx"] = list(policy.mx)
    return record
