"""Traffic-shaping rules: the shipped defaults and the operator's layers, and
what applies to one site.

Rule files are TOML (see defaults.toml and docs/shaping.md). Files are
layered in order; a later value for the same key wins and automation rules
add up. Rates are parsed by the Rust core (`_core.parse_rate`), the same code
that enforces them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from gateway._core import parse_rate
from gateway.config import ConfigError, Duration, parse_duration, read_toml, validate_file

DEFAULTS = Path(__file__).with_name("defaults.toml")


def _rate(value: str) -> str:
    parse_rate(value)
    return value


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from None
    return value


_TRIGGER = re.compile(r"^\s*(\d+)\s+in\s+(\S+)\s*$")


def _trigger(value: str) -> str:
    if value.strip() == "now":
        return value
    m = _TRIGGER.match(value)
    if not m or int(m.group(1)) < 1:
        raise ValueError(f'not a trigger: {value!r} (use "now" or e.g. "5 in 10m")')
    parse_duration(m.group(2))
    return value


RateText = Annotated[str, AfterValidator(_rate)]


def parse_trigger(value: str) -> tuple[int, float]:
    """A trigger ("now" or "N in D") as (count, window in seconds)."""
    m = _TRIGGER.match(value)
    return (int(m.group(1)), parse_duration(m.group(2))) if m else (1, 0.0)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TimeoutOverrides(_Model):
    """Per-site SMTP timeouts over `[delivery.timeouts]`; unset ones keep that value."""

    connect: Duration | None = None
    greeting: Duration | None = None
    ehlo: Duration | None = None
    starttls: Duration | None = None
    mail: Duration | None = None
    rcpt: Duration | None = None
    data_init: Duration | None = None
    data_block: Duration | None = None
    data_done: Duration | None = None


class Limits(_Model):
    """Shaping values; None means "not set here" so layers can leave keys alone."""

    max_connections: int | None = Field(default=None, ge=1)
    max_messages_per_connection: int | None = Field(default=None, ge=1)
    message_rate: RateText | None = None
    connection_rate: RateText | None = None
    tls: Literal["opportunistic", "required"] | None = None
    timeouts: TimeoutOverrides | None = None
    # The site's totals over every source (and, with Redis, every node); optional.
    site_message_rate: RateText | None = None
    site_max_connections: int | None = Field(default=None, ge=1)


class Automation(_Model):
    """Replies matching `match` (regex over "code enhanced text") act on `scope`:
    the site, the source that got the reply there, or the message's tenant or
    campaign there."""

    match: Annotated[str, AfterValidator(_regex)]
    trigger: Annotated[str, AfterValidator(_trigger)] = "now"
    action: Literal["suspend", "reduce-rate", "reduce-connections", "bounce"]
    scope: Literal["site", "source", "tenant", "campaign"] = "site"
    factor: float = Field(default=0.5, gt=0.0, lt=1.0)
    duration: Duration = 3600.0

    @model_validator(mode="after")
    def _connections_belong_to_sites(self) -> Automation:
        if self.action == "reduce-connections" and self.scope in ("tenant", "campaign"):
            raise ValueError(
                "reduce-connections acts on a site or source: connections carry every "
                "tenant's and campaign's mail"
            )
        return self


class Section(Limits):
    automation: list[Automation] = []


class Provider(Section):
    mx_suffixes: list[str] = []


class RuleFile(_Model):
    default: Section = Section()
    provider: dict[str, Provider] = {}
    domain: dict[str, Section] = {}


@dataclass
class Resolved:
    """What applies to one site: every limit set, and the automation rules."""

    provider: str | None
    max_connections: int
    max_messages_per_connection: int
    message_rate: str
    connection_rate: str
    tls: str
    site_message_rate: str = ""  # "" = no total beyond the per-source rates
    site_max_connections: int = 0  # 0 = no total beyond the per-source limits
    timeouts: dict[str, float] = field(default_factory=dict)
    automation: list[Automation] = field(default_factory=list)


def provider_of(rules: Resolved) -> str:
    """The provider name holds and caps use: "other" for sites of no named provider."""
    return rules.provider or "other"


_LIMIT_KEYS = tuple(k for k in Limits.model_fields if k != "timeouts")
_OPTIONAL_KEYS = {"site_message_rate", "site_max_connections"}


def _merge(base: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    """Layer one rule file over another: values replace, automation lists add up."""
    merged = dict(base)
    for key, value in layer.items():
        if key == "automation":
            merged[key] = [*merged.get(key, []), *value]
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class Shaping:
    def __init__(self, rules: RuleFile) -> None:
        self.rules = rules
        # Longest suffix first, so a specific provider wins over a general one.
        self._suffixes = sorted(
            (
                (suffix.lower(), name)
                for name, p in rules.provider.items()
                for suffix in p.mx_suffixes
            ),
            key=lambda item: -len(item[0]),
        )

    def provider_of(self, mx_hosts: list[str]) -> str | None:
        """The provider whose suffix matches the site's MX hosts (the first host decides)."""
        for host in mx_hosts:
            name = host.lower().rstrip(".")
            for suffix, provider in self._suffixes:
                if name.endswith(suffix):
                    return provider
        return None

    def resolve(self, domain: str, mx_hosts: list[str]) -> Resolved:
        """default, then the provider the MX hosts belong to, then the domain's own section."""
        provider = self.provider_of(mx_hosts)
        layers: list[Section] = [self.rules.default]
        if provider:
            layers.append(self.rules.provider[provider])
        if domain.lower() in self.rules.domain:
            layers.append(self.rules.domain[domain.lower()])
        values: dict[str, Any] = {}
        timeouts: dict[str, float] = {}
        automation: list[Automation] = []
        for layer in layers:
            for key in _LIMIT_KEYS:
                value = getattr(layer, key)
                if value is not None:
                    values[key] = value
            if layer.timeouts:
                timeouts.update(layer.timeouts.model_dump(exclude_none=True))
            automation += layer.automation
        missing = [k for k in _LIMIT_KEYS if k not in values and k not in _OPTIONAL_KEYS]
        if missing:
            raise ConfigError(f"shaping: [default] must set {', '.join(missing)}")
        return Resolved(provider=provider, automation=automation, timeouts=timeouts, **values)


def load_shaping(extra: list[Path] | None = None) -> Shaping:
    """The shipped defaults with each file of `extra` layered on top, in order."""
    merged: dict[str, Any] = {}
    for path in [DEFAULTS, *(extra or [])]:
        layer = read_toml(path)
        validate_file(RuleFile, layer, path)  # each file must make sense on its own
        merged = _merge(merged, layer)
    return Shaping(RuleFile.model_validate(merged))
