"""`gateway check-domain DOMAIN`: is a sending domain set up for this gateway?

- MX: the domain has mail exchangers (receivers check that a sender can be
  answered).
- SPF: its record authorises every egress address (evaluated by pyspf, the
  reference implementation of RFC 7208, over our resolver).
- DKIM: every key we hold for the domain is published, with the same public key.
- DMARC: a record exists; its policy.
- Each egress address: PTR, forward-confirmed reverse DNS, and whether the
  PTR name is the EHLO name.

Lookups go to `[dns]` nameservers, like delivery. `egress_warnings` is the
FCrDNS part, which the gateway also runs at start.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

import dns.exception
import dns.resolver
import dns.reversename
import spf

from gateway.config import Config
from gateway.delivery.egress import SourcePicker
from gateway.dkim import KeyStore

Level = Literal["ok", "warn", "fail"]


@dataclass
class Finding:
    level: Level
    check: str
    detail: str

    def __str__(self) -> str:
        return f"{self.level.upper():<4} {self.check:<8} {self.detail}"


def resolver_for(config: Config) -> dns.resolver.Resolver:
    resolver = dns.resolver.Resolver(configure=not config.dns.nameservers)
    if config.dns.nameservers:
        resolver.nameservers = list(config.dns.nameservers)
    resolver.port = config.dns.port
    resolver.lifetime = config.dns.timeout
    return resolver


def _texts(resolver: dns.resolver.Resolver, name: str) -> list[str]:
    try:
        answer = resolver.resolve(name, "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]


def _tag(record: str, tag: str) -> str | None:
    for part in record.split(";"):
        key, _, value = part.strip().partition("=")
        if key.strip() == tag:
            return "".join(value.split())
    return None


def fcrdns(resolver: dns.resolver.Resolver, address: str, ehlo: str) -> list[Finding]:
    """PTR of an egress address, whether it resolves back, whether it is the EHLO name."""
    name = f"egress {address}"
    try:
        ptrs = [
            str(r.target).rstrip(".").lower()
            for r in resolver.resolve(dns.reversename.from_address(address), "PTR")
        ]
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return [Finding("fail", "ptr", f"{name}: no PTR record")]
    except dns.exception.DNSException as exc:
        return [Finding("fail", "ptr", f"{name}: PTR lookup failed: {exc}")]
    kind = "AAAA" if ipaddress.ip_address(address).version == 6 else "A"
    confirmed = []
    for ptr in ptrs:
        try:
            forward = {r.to_text() for r in resolver.resolve(ptr, kind)}
        except dns.exception.DNSException:
            continue
        if address in forward:
            confirmed.append(ptr)
    if not confirmed:
        return [Finding("fail", "fcrdns", f"{name}: PTR {', '.join(ptrs)} does not resolve back")]
    found = [Finding("ok", "fcrdns", f"{name}: {confirmed[0]} resolves back")]
    if ehlo.lower().rstrip(".") not in confirmed:
        found.append(Finding("warn", "ehlo", f"{name}: EHLO name {ehlo} is not its PTR name"))
    return found


def egress_warnings(config: Config) -> list[Finding]:
    resolver = resolver_for(config)
    findings = []
    for source in SourcePicker(config.egress, config.helo_name).sources:
        if source.address:
            findings += [
                f for f in fcrdns(resolver, source.address, source.ehlo) if f.level != "ok"
            ]
    return findings


def check_domain(config: Config, domain: str) -> list[Finding]:
    resolver = resolver_for(config)
    findings: list[Finding] = []
    try:
        mx = sorted(resolver.resolve(domain, "MX"), key=lambda r: r.preference)
        hosts = ", ".join(str(r.exchange).rstrip(".") for r in mx)
        findings.append(Finding("ok", "mx", hosts or "null MX"))
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        findings.append(
            Finding("warn", "mx", "no MX records: replies to the sender may not arrive")
        )
    sources = [s for s in SourcePicker(config.egress, config.helo_name).sources if s.address]
    findings += _spf(resolver, domain, [(s.address or "", s.ehlo) for s in sources])
    findings += _dkim(resolver, config, domain)
    findings += _dmarc(resolver, domain)
    for source in sources:
        findings += fcrdns(resolver, source.address or "", source.ehlo)
    return findings


def _spf(
    resolver: dns.resolver.Resolver, domain: str, sources: list[tuple[str, str]]
) -> list[Finding]:
    records = [t for t in _texts(resolver, domain) if t.lower().startswith("v=spf1")]
    if not records:
        return [Finding("fail", "spf", f"no SPF record at {domain}")]
    if len(records) > 1:
        return [Finding("fail", "spf", f"{len(records)} SPF records (RFC 7208 permits one)")]
    if not sources:
        return [Finding("warn", "spf", f"{records[0]} (no egress addresses set to check)")]
    previous = dns.resolver.default_resolver
    dns.resolver.default_resolver = resolver  # pyspf resolves through dnspython's default
    try:
        findings = []
        for address, ehlo in sources:
            result, explanation = spf.check2(i=address, s=f"postmaster@{domain}", h=ehlo)
            level: Level = "ok" if result == "pass" else "fail"
            findings.append(Finding(level, "spf", f"{address}: {result} ({explanation})"))
        return findings
    finally:
        dns.resolver.default_resolver = previous


def _dkim(resolver: dns.resolver.Resolver, config: Config, domain: str) -> list[Finding]:
    signers = [s for s in KeyStore(config.dkim).signers if s.domain == domain.lower()]
    if not signers:
        return [Finding("warn", "dkim", f"no DKIM key for {domain} in [dkim]")]
    findings = []
    for signer in signers:
        name = f"{signer.selector}._domainkey.{domain}"
        ours = _tag(signer.dns_record(), "p")
        published = [_tag(t, "p") for t in _texts(resolver, name)]
        if not published:
            findings.append(Finding("fail", "dkim", f"{name}: not published"))
        elif ours in published:
            findings.append(Finding("ok", "dkim", f"{name}: matches our {signer.algorithm} key"))
        else:
            findings.append(Finding("fail", "dkim", f"{name}: published key is not ours"))
    return findings


def _dmarc(resolver: dns.resolver.Resolver, domain: str) -> list[Finding]:
    records = [t for t in _texts(resolver, f"_dmarc.{domain}") if t.startswith("v=DMARC1")]
    if not records:
        return [Finding("fail", "dmarc", f"no DMARC record at _dmarc.{domain}")]
    policy = _tag(records[0], "p") or "?"
    level: Level = "warn" if policy == "none" else "ok"
    return [Finding(level, "dmarc", f"p={policy} ({records[0]})")]
