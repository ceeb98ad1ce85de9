"""Bounce classification: a failed delivery's reply → a class.

Shipped text rules (`bounce_rules.toml`, for the replies providers really
send) come first, then RFC 3463's enhanced status codes. Every class is
counted by the gateway (`gateway_delivery_failures_total{bounce_class}`);
suppression acts on the hard ones.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from gateway import PluginContext, PluginSettings, hookimpl

SHIPPED_RULES = Path(__file__).with_name("bounce_rules.toml")

# RFC 3463 subject.detail → class, most specific first ("X.1.1" before "X.1").
STATUS_CLASSES: dict[str, str] = {
    "1.1": "invalid-recipient",  # bad destination mailbox address
    "1.2": "bad-domain",  # bad destination system address
    "1.3": "invalid-recipient",  # bad destination mailbox address syntax
    "1.6": "invalid-recipient",  # destination mailbox has moved
    "1.10": "bad-domain",  # null MX (RFC 7505)
    "2.1": "invalid-recipient",  # mailbox disabled
    "2.2": "mailbox-full",  # mailbox full
    "2.3": "content",  # message length exceeds administrative limit
    "3.4": "content",  # message too big for system
    "4.4": "bad-domain",  # unable to route
    "4.7": "expired",  # delivery time expired
    "7.1": "policy-block",  # delivery not authorized, message refused
    "7.5": "auth-failure",  # cryptographic failure
    "1": "invalid-recipient",
    "2": "mailbox-full",
    "3": "transient",  # mail system status
    "4": "transient",  # network and routing status
    "5": "protocol",
    "6": "content",  # message content or media
    "7": "policy-block",
}

CLASSES = sorted({*STATUS_CLASSES.values(), "blocklist", "rate-limit", "spam-block", "other"})


class BounceClassesSettings(PluginSettings):
    # A TOML file of [[rule]] tables (match, class) tried before the shipped ones.
    rules_file: Path | None = None


def load_rules(*paths: Path) -> list[tuple[re.Pattern[str], str]]:
    rules = []
    for path in paths:
        for rule in tomllib.loads(path.read_text()).get("rule", []):
            if rule["class"] not in CLASSES:
                raise ValueError(f"{path}: unknown class {rule['class']!r} (known: {CLASSES})")
            rules.append((re.compile(rule["match"], re.IGNORECASE), rule["class"]))
    return rules


def classify(status: str, reply: str, rules: list[tuple[re.Pattern[str], str]]) -> str:
    for pattern, name in rules:
        if pattern.search(reply):
            return name
    _, _, detail = status.partition(".")  # "5.1.1" -> "1.1"
    subject = detail.partition(".")[0]
    return STATUS_CLASSES.get(detail) or STATUS_CLASSES.get(subject) or "other"


class BounceClasses:
    Settings = BounceClassesSettings

    def __init__(self) -> None:
        self.rules = load_rules(SHIPPED_RULES)

    @hookimpl
    def gateway_startup(self, context: PluginContext) -> None:
        settings: BounceClassesSettings = context.settings
        extra = [settings.rules_file] if settings.rules_file else []
        self.rules = load_rules(*extra, SHIPPED_RULES)

    @hookimpl
    def delivery_classify(self, status: str, reply: str) -> str:
        return classify(status, reply, self.rules)


plugin = BounceClasses()
