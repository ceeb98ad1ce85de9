"""Per-message compliance with Gmail's and Yahoo's 2024 bulk-sender rules,
before signing.

Checks, each with an action (`reject`, `fix` where it can be fixed, or `tag`:
let it go, log a `compliance` event and count it in
`gateway_plugin_events_total{plugin="compliance",kind="CHECK:ACTION"}`):

- `alignment`: the From domain is aligned (same organisational domain) with a
  domain that DKIM-signs the message or with the MAIL FROM domain (SPF).
  DMARC needs one of the two.
- `headers`: one From, a Date and a Message-ID (RFC 5322). `fix` adds the
  missing Date and Message-ID.
- `freemail_from`: no From at a large mailbox provider's domain (gmail.com,
  yahoo.com ...) relayed through us: their DMARC policies reject it anyway.
- `unsubscribe`: mail of a marketing stream carries one-click unsubscribe
  (List-Unsubscribe with an https URL, and List-Unsubscribe-Post).

The organisational domain is taken as the last two labels (three under a
two-letter country code with a second-level label such as co.uk): the
public suffix list would be exact.
"""

from __future__ import annotations

import email.utils
import time
from typing import Literal

from gateway import (
    Decision,
    EnvelopeInfo,
    MessageInfo,
    PluginContext,
    PluginSettings,
    hookimpl,
)

Check = Literal["alignment", "headers", "freemail_from", "unsubscribe"]
Action = Literal["reject", "fix", "tag"]
FIXABLE = {"headers"}
_SECOND_LEVEL = {"co", "com", "net", "org", "ac", "gov", "edu", "ne", "or"}

FREEMAIL = [
    "gmail.com", "googlemail.com", "yahoo.com", "ymail.com", "rocketmail.com", "aol.com",
    "outlook.com", "hotmail.com", "live.com", "msn.com", "icloud.com", "me.com", "mac.com",
    "yahoo.co.uk", "hotmail.co.uk", "gmx.com", "gmx.de", "web.de", "mail.ru", "yandex.ru",
    "zoho.com", "proton.me", "protonmail.com",
]  # fmt: skip


class ComplianceSettings(PluginSettings):
    actions: dict[Check, Action] = {
        "alignment": "tag",
        "headers": "fix",
        "freemail_from": "reject",
        "unsubscribe": "tag",
    }
    freemail_domains: list[str] = FREEMAIL
    marketing_streams: list[str] = ["marketing", "newsletter", "bulk"]


def org_domain(domain: str) -> str:
    labels = domain.lower().rstrip(".").split(".")
    if len(labels) >= 3 and len(labels[-1]) == 2 and labels[-2] in _SECOND_LEVEL:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


class Compliance:
    Settings = ComplianceSettings

    def __init__(self) -> None:
        self.settings = ComplianceSettings()
        self.context: PluginContext | None = None

    @hookimpl
    def gateway_startup(self, context: PluginContext) -> None:
        self.context, self.settings = context, context.settings
        for check, action in self.settings.actions.items():
            if action == "fix" and check not in FIXABLE:
                raise ValueError(f"compliance: {check} cannot be fixed, only rejected or tagged")

    def action(self, check: Check) -> Action:
        return self.settings.actions.get(check, "tag")

    # -- fixes, before the checks -------------------------------------------------

    @hookimpl
    def message_headers(
        self, envelope: EnvelopeInfo, message: MessageInfo
    ) -> list[tuple[str, str]] | None:
        if self.action("headers") != "fix" or self.context is None:
            return None
        added = []
        if message.get("Date") is None:
            added.append(("Date", email.utils.formatdate(time.time(), localtime=True)))
        if message.get("Message-ID") is None:
            added.append(("Message-ID", f"<{envelope.qid}@{self.context.hostname}>"))
        return added or None

    # -- the checks ------------------------------------------------------------------

    def findings(
        self, envelope: EnvelopeInfo, message: MessageInfo, signing_domains: tuple[str, ...]
    ) -> list[tuple[Check, str]]:
        found: list[tuple[Check, str]] = []
        froms = [v for n, v in message.headers if n.lower() == "from"]
        missing = [h for h in ("Date", "Message-ID") if message.get(h) is None]
        if len(froms) != 1 or len(message.from_domains) != 1 or missing:
            found.append(("headers", f"From x{len(froms)}, missing {', '.join(missing) or '-'}"))
        for domain in message.from_domains:
            org = org_domain(domain)
            aligned = {org_domain(d) for d in signing_domains}
            if envelope.sender_domain:
                aligned.add(org_domain(envelope.sender_domain))
            if org not in aligned:
                found.append(("alignment", f"From {domain} is aligned with neither DKIM nor SPF"))
            if domain.lower() in self.settings.freemail_domains:
                found.append(("freemail_from", f"From {domain}, a mailbox provider's domain"))
        if envelope.stream in self.settings.marketing_streams:
            unsub = message.get("List-Unsubscribe") or ""
            if "https://" not in unsub.lower() or message.get("List-Unsubscribe-Post") is None:
                found.append(("unsubscribe", "marketing mail without one-click unsubscribe"))
        return found

    @hookimpl
    def message_check(
        self, envelope: EnvelopeInfo, message: MessageInfo, signing_domains: tuple[str, ...]
    ) -> Decision | None:
        assert self.context is not None
        refusal: Decision | None = None
        for check, detail in self.findings(envelope, message, signing_domains):
            action = self.action(check)
            self.context.log(
                "compliance", qid=envelope.qid, check=check, action=action, detail=detail
            )
            self.context.count("compliance", kind=f"{check}:{action}")
            if action == "reject" and refusal is None:
                refusal = Decision.reject(
                    f"Not compliant ({check}): {detail}", status=_STATUS[check]
                )
        return refusal


_STATUS: dict[Check, str] = {
    "alignment": "5.7.26",  # RFC 7372: multiple authentication checks failed
    "headers": "5.6.0",
    "freemail_from": "5.7.26",
    "unsubscribe": "5.7.1",
}

plugin = Compliance()
