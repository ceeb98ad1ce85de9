"""Every hook a plugin can implement, in the order a message meets them.

Kinds (see docs/plugins.md):
- **first decision**: implementations run in plugin order until one returns
  something other than None; that result decides, the rest do not run.
- **all run**: every implementation runs; results are collected (or ignored).
- **sync**: on the delivery path; implementations must return at once, not a
  coroutine (the gateway logs an error and skips one that does).

Implementations may be `async def` except where a hook says sync. Each async
call is bounded by `plugins.timeout` (30 s; `plugins.timeouts.NAME` per
plugin): past it, an SMTP hook answers 451 4.3.0 and other hooks go on
without that plugin's answer. An exception in a plugin is logged
(`plugin_error`) and counted (`gateway_plugin_errors_total`), and the hook
goes on as if that plugin had returned None: it never crashes a session or
loses mail. Implementations receive only the arguments they name.
"""

from __future__ import annotations

import pluggy

from gateway.plugin import (
    Decision,
    Delivery,
    Destination,
    EnvelopeInfo,
    Login,
    MessageInfo,
    PluginContext,
    Route,
    SessionInfo,
)

hookspec = pluggy.HookspecMarker("gateway")

# -- life cycle ---------------------------------------------------------------


@hookspec
def gateway_startup(context: PluginContext) -> None:
    """All run, once, before the gateway accepts mail. `context` carries the
    plugin's checked settings, the policy store, egress control, HTTP routes
    and `emit`. Load state, register routes and caps here. An exception here
    stops the gateway from starting (a plugin that cannot start is a
    configuration error, not something to run without)."""


@hookspec
def gateway_shutdown() -> None:
    """All run, once, after delivery stopped: flush and close."""


# -- ingress ------------------------------------------------------------------


@hookspec
def smtp_connect(session: SessionInfo) -> Decision | None:
    """First decision, when a client connects, before the greeting. Reject or
    disconnect to refuse the client (the gateway answers with the decision and
    closes); None or accept to go on."""


@hookspec
def smtp_auth(session: SessionInfo, username: str, password: str) -> Login | None:
    """First result, at AUTH (PLAIN or LOGIN, over TLS only): a `Login` accepts
    the credentials; None leaves them to the next plugin and then to
    `[smtp.auth] users_file`. Never log the password."""


@hookspec
def smtp_mail_from(session: SessionInfo, envelope: EnvelopeInfo) -> Decision | None:
    """First decision, at MAIL FROM (`envelope.sender` is set, "" for <>).
    Reject (5xx) or defer (4xx) refuses the sender."""


@hookspec
def smtp_rcpt_to(session: SessionInfo, envelope: EnvelopeInfo, recipient: str) -> Decision | None:
    """First decision, at each RCPT TO, after relay control and syntax checks.
    Reject or defer refuses this recipient only; the others of the transaction
    go on. `envelope.recipients` are those accepted so far. Suppression and
    consent checks live here."""


@hookspec
def smtp_data(
    session: SessionInfo, envelope: EnvelopeInfo, message: MessageInfo
) -> Decision | None:
    """First decision, at the end of DATA, once the message is parsed and
    before it is signed and stored. `envelope.stream`, `tenant` and `campaign`
    are known here. Reject or defer refuses the whole message."""


@hookspec
def message_headers(envelope: EnvelopeInfo, message: MessageInfo) -> list[tuple[str, str]] | None:
    """All run, after `smtp_data` accepted, before DKIM signing: header fields
    to add at the top of the message, as (name, value) pairs. Added fields are
    signed like the rest (List-Unsubscribe and List-Unsubscribe-Post always)."""


@hookspec
def message_check(
    envelope: EnvelopeInfo, message: MessageInfo, signing_domains: tuple[str, ...]
) -> Decision | None:
    """First decision, last before signing: `message` now includes the fields
    `message_headers` added, `signing_domains` are the domains whose DKIM keys
    will sign it. Reject or defer refuses the message (compliance checks)."""


# -- delivery -----------------------------------------------------------------


@hookspec
def delivery_route(envelope: EnvelopeInfo, destination: Destination) -> Route | None:
    """First decision, sync, when a due message reaches its site: which egress
    pool sends it. None leaves it to `egress.default_pool`. The answer is
    cached per (sender domain, tenant, campaign, stream, site)."""


@hookspec
def delivery_classify(status: str, reply: str) -> str | None:
    """First decision, sync, for each failed attempt: the bounce class of a
    reply (`status` is its enhanced code, `reply` the whole reply), e.g.
    "invalid-recipient". The class is logged, counted, and handed to
    `delivery_deferred`/`delivery_bounced` as `Delivery.bounce_class`."""


@hookspec
def delivery_delivered(delivery: Delivery) -> None:
    """All run, after a recipient was accepted by its MX. A notification: a
    plain implementation runs as the outcome is recorded (keep it quick), an
    async one beside delivery (it does not hold the connection)."""


@hookspec
def delivery_deferred(delivery: Delivery) -> None:
    """All run, after a temporary failure (the recipient will be retried)."""


@hookspec
def delivery_bounced(delivery: Delivery) -> None:
    """All run, after a permanent failure or expiry (a DSN goes to the sender),
    and for a bounce that came back later and was matched (attempts 0).
    Hard bounces feed suppression here."""


@hookspec
def delivery_connect_failed(source: str, site: str, host: str, error: str) -> None:
    """All run, sync, when a connection from `source` to an MX host of `site`
    failed (refused, timeout, greeting refused, TLS required but missing)."""


# -- feedback -----------------------------------------------------------------


@hookspec
def feedback_unsubscribe(recipient: str, list_id: str, sender_domain: str, method: str) -> None:
    """All run, when a recipient unsubscribed (`method`: "one-click", "mailto",
    "manual"). Emitted by the unsubscribe plugin; suppression listens."""


@hookspec
def feedback_complaint(recipient: str, sender_domain: str, source: str, qid: str) -> None:
    """All run, when a recipient reported a message as spam: an ARF report came
    to a `feedback.fbl_addresses` address and was matched to what was sent
    (plugins may emit it too). `source` is the egress source that sent it."""


def hook_names() -> list[str]:
    return [name for name, value in globals().items() if hasattr(value, "gateway_spec")]
