"""The public API for plugins: everything a plugin may import from `gateway`.

A plugin is a module (or object) with functions marked `@hookimpl`, named
after the hooks in `gateway.hookspecs`, registered under the entry-point
group `gateway`. It may declare a pydantic model named `Settings`: its
`[plugin.NAME]` config table is checked against it and handed over as
`context.settings` in `gateway_startup`. The built-in plugins in `plugins/`
use nothing else. See docs/plugins.md.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import pluggy
from pydantic import BaseModel, ConfigDict

from gateway.delivery.holds import Scope
from gateway.log import event
from gateway.metrics import PLUGIN_EVENTS, PLUGIN_GAUGE

if TYPE_CHECKING:
    from aiohttp import web

    from gateway.spool import Envelope as SpoolEnvelope
    from gateway.store import PolicyStore

hookimpl = pluggy.HookimplMarker("gateway")

Action = Literal["accept", "reject", "defer", "disconnect"]


@dataclass(frozen=True)
class Decision:
    """What a plugin decides about an SMTP command: return one to decide, None to pass."""

    action: Action
    code: int
    status: str  # RFC 3463 enhanced status code
    text: str

    @classmethod
    def accept(cls, text: str = "OK", code: int = 250, status: str = "2.0.0") -> Decision:
        return cls("accept", code, status, text)

    @classmethod
    def reject(cls, text: str, code: int = 550, status: str = "5.7.1") -> Decision:
        return cls("reject", code, status, text)

    @classmethod
    def defer(cls, text: str, code: int = 451, status: str = "4.7.1") -> Decision:
        return cls("defer", code, status, text)

    @classmethod
    def disconnect(cls, text: str, code: int = 421, status: str = "4.7.0") -> Decision:
        return cls("disconnect", code, status, text)

    def __str__(self) -> str:
        return f"{self.code} {self.status} {self.text}"


class PluginSettings(BaseModel):
    """Base for a plugin's `Settings`: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class SessionInfo:
    """The SMTP client."""

    client_ip: str
    helo: str = ""
    user: str = ""  # the authenticated user ("" before or without AUTH)
    tenant: str = ""  # the user's tenant and stream (from the users file or smtp_auth)
    stream: str = ""
    tls: bool = False  # the session is encrypted (STARTTLS or implicit TLS)


@dataclass(frozen=True)
class Login:
    """An accepted SMTP login (what `smtp_auth` returns): the user, and the
    tenant and stream their mail counts for (over X-Gateway-* headers)."""

    user: str
    tenant: str = ""
    stream: str = ""


@dataclass(frozen=True)
class EnvelopeInfo:
    """The transaction so far. `stream`, `tenant` and `campaign` come from the
    X-Gateway-Stream/-Tenant/-Campaign headers, so they are known at DATA only."""

    sender: str  # "" for the null sender
    recipients: tuple[str, ...] = ()
    qid: str = ""
    stream: str = ""
    tenant: str = ""
    campaign: str = ""

    @property
    def sender_domain(self) -> str:
        return self.sender.rpartition("@")[2].lower()


def envelope_info(env: SpoolEnvelope) -> EnvelopeInfo:
    """What plugins see of a spooled message's envelope."""
    return EnvelopeInfo(
        sender=env.sender,
        recipients=tuple(env.recipients),
        qid=env.qid,
        stream=env.stream,
        tenant=env.tenant,
        campaign=env.campaign,
    )


@dataclass(frozen=True)
class MessageInfo:
    """The parsed message at end of DATA (top-level headers)."""

    headers: tuple[tuple[str, str], ...]  # (name, decoded value), in order
    from_domains: tuple[str, ...] = ()

    def get(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for n, v in self.headers if n.lower() == wanted), None)


@dataclass(frozen=True)
class Destination:
    """Where a message goes: for routing decisions."""

    domain: str
    site: str  # the MX host set (MX rollup)
    provider: str | None  # from the shaping rules' MX suffixes


@dataclass(frozen=True)
class Route:
    """A routing decision: which egress pool sends the message."""

    pool: str


@dataclass(frozen=True)
class Delivery:
    """One recipient's attempt and its outcome."""

    qid: str
    sender: str
    recipient: str
    kind: Literal["delivered", "deferred", "bounced", "expired"]
    status: str  # enhanced status code
    reply: str
    bounce_class: str  # from delivery_classify; "" for delivered
    attempts: int
    domain: str
    site: str = ""
    provider: str | None = None
    source: str = ""
    tenant: str = ""
    campaign: str = ""
    stream: str = ""
    index: int = -1  # the recipient's position in the message's envelope

    @property
    def sender_domain(self) -> str:
        return self.sender.rpartition("@")[2].lower()


class Capacity(Protocol):
    """A cap a plugin puts on an egress source (e.g. warm-up's daily count).
    Called on the delivery path: both must be quick and must not block."""

    def wait(self, now: float) -> float:
        """Seconds until one more message may go (0.0: now)."""
        ...

    def take(self, now: float) -> None:
        """One message is going."""
        ...


class Egress(Protocol):
    """What plugins may do to egress sources (implemented by the delivery engine)."""

    def source_names(self) -> list[str]: ...

    def pools(self) -> dict[str, dict[str, int]]: ...

    def set_cap(
        self, source: str, cap: str | Capacity | None, provider: str = "*", name: str = ""
    ) -> None:
        """Cap `source` overall ("*"), towards one provider, or towards "other" (no named
        provider): a rate like "500/h" or a Capacity; None lifts it. `name` tells caps
        of one provider apart (e.g. "warmup")."""
        ...

    def suspend(self, scope: Scope, until: float, reason: str) -> None: ...

    def resume(self, scope: Scope) -> bool: ...


Handler = Callable[["web.Request"], Awaitable["web.StreamResponse"]]


class HttpRoutes(Protocol):
    def add(self, method: str, path: str, handler: Handler) -> None:
        """Serve `handler` at `path` (aiohttp route syntax) on the [http] listener."""
        ...


@dataclass
class PluginContext:
    """Handed to `gateway_startup`: the plugin's settings and the gateway's services."""

    name: str
    settings: Any
    store: PolicyStore
    egress: Egress
    http: HttpRoutes  # the public listener: for recipients (unsubscribe links)
    admin: HttpRoutes  # the admin listener, behind its token: for operators and apps
    hostname: str
    public_url: str  # [http] public_url: how recipients reach the HTTP endpoints
    data_dir: str
    emit: Callable[..., Awaitable[None]] = field(repr=False)  # emit("hook_name", **kwargs)
    # False in an ingress worker: this process takes mail in but never delivers,
    # so delivery-side state (caps, counters) is not its to keep.
    delivers: bool = True

    def log(self, name: str, level: int = logging.INFO, **fields: Any) -> None:
        """One JSON log line, tagged with the plugin's name."""
        event(name, level, plugin=self.name, **fields)

    def count(self, name: str, kind: str = "") -> None:
        """Add one to gateway_plugin_events_total{plugin, event=name, kind}."""
        PLUGIN_EVENTS.labels(self.name, name, kind).inc()

    def gauge(self, name: str, value: float, kind: str = "") -> None:
        """Set gateway_plugin_gauge{plugin, name, kind}."""
        PLUGIN_GAUGE.labels(self.name, name, kind).set(value)


__all__ = [
    "Capacity",
    "Decision",
    "Delivery",
    "Destination",
    "Egress",
    "EnvelopeInfo",
    "HttpRoutes",
    "Login",
    "MessageInfo",
    "PluginContext",
    "PluginSettings",
    "Route",
    "Scope",
    "SessionInfo",
    "hookimpl",
]
