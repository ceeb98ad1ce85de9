"""Where to deliver a domain's mail: MX lookup with dnspython (RFC 5321 §5.1).

- MX records by preference, equal preferences shuffled for load spreading;
- no MX records: the domain's own A/AAAA (implicit MX);
- a null MX (RFC 7505: one MX with exchange ".") and NXDOMAIN fail permanently;
- SERVFAIL, timeouts and unreachable servers fail temporarily (retry later).
"""

from __future__ import annotations

import ipaddress
import random
import time
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from gateway.config import DnsConfig

CACHE_MAX_SECONDS = 300.0


@dataclass(frozen=True)
class MxHost:
    name: str
    preference: int
    addresses: tuple[str, ...]


class DnsError(Exception):
    """A failed lookup, with the SMTP status it maps to."""

    def __init__(self, message: str, *, permanent: bool, status: str) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.status = status


class MxResolver:
    def __init__(self, config: DnsConfig) -> None:
        self._resolver = dns.asyncresolver.Resolver(configure=not config.nameservers)
        if config.nameservers:
            self._resolver.nameservers = list(config.nameservers)
        self._resolver.port = config.port
        self._resolver.lifetime = config.timeout
        self._resolver.timeout = min(config.timeout, 3.0)
        self._cache: dict[str, tuple[float, list[MxHost]]] = {}

    def cached(self, domain: str) -> list[MxHost] | None:
        """The hosts of a fresh cache entry, without a lookup (None if none)."""
        hit = self._cache.get(domain)
        return hit[1] if hit and hit[0] > time.monotonic() else None

    async def resolve(self, domain: str) -> list[MxHost]:
        """MX hosts in the order to try them, each with its addresses."""
        now = time.monotonic()
        hit = self._cache.get(domain)
        if hit and hit[0] > now:
            return shuffle_equal(hit[1])
        hosts, ttl = await self._lookup(domain)
        self._cache[domain] = (now + min(ttl, CACHE_MAX_SECONDS), hosts)
        return shuffle_equal(hosts)

    async def _lookup(self, domain: str) -> tuple[list[MxHost], float]:
        literal = _address_literal(domain)
        if literal:
            return [MxHost(domain, 0, (literal,))], CACHE_MAX_SECONDS
        try:
            answer = await self._resolver.resolve(domain, "MX", search=False)
        except dns.resolver.NoAnswer:
            addresses = await self._addresses(domain)
            if not addresses:
                raise DnsError(
                    f"{domain} has no MX and no address records", permanent=True, status="5.1.2"
                ) from None
            return [MxHost(domain, 0, addresses)], CACHE_MAX_SECONDS
        except dns.resolver.NXDOMAIN:
            raise DnsError(
                f"domain {domain} does not exist", permanent=True, status="5.1.2"
            ) from None
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
            raise DnsError(
                f"MX lookup for {domain} failed: {exc}", permanent=False, status="4.4.3"
            ) from None
        records = sorted(answer, key=lambda r: r.preference)
        if len(records) == 1 and records[0].exchange == dns.name.root:
            raise DnsError(
                f"{domain} does not accept mail (null MX, RFC 7505)",
                permanent=True,
                status="5.1.10",
            )
        hosts = []
        for record in records:
            if record.exchange == dns.name.root:
                continue
            name = record.exchange.to_text(omit_final_dot=True)
            addresses = await self._addresses(name)
            if addresses:
                hosts.append(MxHost(name, record.preference, addresses))
        if not hosts:
            raise DnsError(
                f"no MX host of {domain} has an address", permanent=False, status="4.4.4"
            )
        return hosts, float(answer.rrset.ttl if answer.rrset else CACHE_MAX_SECONDS)

    async def txt(self, name: str) -> list[str] | None:
        """The TXT strings at `name` (each record's strings joined); None when
        there is no such record; DnsError when the lookup failed."""
        try:
            answer = await self._resolver.resolve(name, "TXT", search=False)
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            return None
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
            message = f"TXT lookup for {name} failed: {exc}"
            raise DnsError(message, permanent=False, status="4.4.3") from None
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]

    async def addresses(self, name: str) -> tuple[str, ...]:
        """A and AAAA addresses of a host name (empty if it has none)."""
        return await self._addresses(name)

    async def _addresses(self, name: str) -> tuple[str, ...]:
        found: list[str] = []
        transient: Exception | None = None
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self._resolver.resolve(name, rdtype, search=False)
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
                continue
            except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
                transient = exc
                continue
            found.extend(r.address for r in answer)
        if not found and transient is not None:
            raise DnsError(
                f"address lookup for {name} failed: {transient}", permanent=False, status="4.4.3"
            )
        return tuple(found)


def _address_literal(domain: str) -> str | None:
    """The address of a domain literal such as [192.0.2.1] or [IPv6:2001:db8::1]."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    inner = inner[5:] if inner.lower().startswith("ipv6:") else inner
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError:
        raise DnsError(f"bad address literal {domain}", permanent=True, status="5.1.2") from None


def shuffle_equal(hosts: list[MxHost]) -> list[MxHost]:
    """Same order by preference; hosts of equal preference in random order."""
    keyed = [(h.preference, random.random(), h) for h in hosts]
    return [h for _, _, h in sorted(keyed, key=lambda k: (k[0], k[1]))]


def site_of(hosts: list[MxHost]) -> str:
    """The site mail goes to: its MX host names, sorted (MX rollup).

    Domains whose MX hosts are the same share a site, and with it connections
    and limits: a thousand Google Workspace domains are one site.
    """
    return ",".join(sorted({h.name.lower().rstrip(".") for h in hosts}))
