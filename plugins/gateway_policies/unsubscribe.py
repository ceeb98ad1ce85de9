"""One-click unsubscribe (RFC 8058) for marketing mail.

To a message of a marketing stream that has no List-Unsubscribe, this adds

    List-Unsubscribe: <https://PUBLIC_URL/unsubscribe/TOKEN>, <mailto:...>
    List-Unsubscribe-Post: List-Unsubscribe=One-Click

before DKIM signing (the gateway's signer always covers both fields). The
token names the recipient, the list (List-Id, else the sender domain) and the
sender domain, with an HMAC-SHA256 over them under `secret`: it cannot be
forged or altered without the secret. A token names one recipient, so
messages with several recipients get no header (logged as
`unsubscribe_skipped`): bulk senders send one message per recipient.

The endpoint: `POST /unsubscribe/TOKEN` with the body
`List-Unsubscribe=One-Click` unsubscribes at once (emits
`feedback_unsubscribe`, which suppression turns into an entry); `GET` shows a
page with a button that makes that POST, for people who click the link.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import time
from typing import Any

from aiohttp import web

from gateway import Duration, EnvelopeInfo, MessageInfo, PluginContext, PluginSettings, hookimpl

PATH = "/unsubscribe"
ONE_CLICK = "List-Unsubscribe=One-Click"


class UnsubscribeSettings(PluginSettings):
    # The HMAC key of the tokens: long and random; changing it voids sent links.
    # Without it (or without [http] public_url) the plugin stays off.
    secret: str = ""
    # Streams whose messages get the headers.
    streams: list[str] = ["marketing", "newsletter", "bulk"]
    # Also offer mailto: (an address whose mail you process), or "" for none.
    mailto: str = ""
    # Links older than this are refused.
    max_age: Duration = 90 * 86400.0


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_token(secret: str, recipient: str, list_id: str, sender_domain: str, at: float) -> str:
    payload = _b64(
        json.dumps(
            {"r": recipient, "l": list_id, "d": sender_domain, "t": int(at)},
            separators=(",", ":"),
        ).encode()
    )
    mac = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{_b64(mac)}"


def read_token(secret: str, token: str, max_age: float, now: float) -> dict[str, Any] | None:
    """The token's fields if its MAC is right and it is not too old; else None."""
    payload, _, mac = token.partition(".")
    try:
        expected = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, _unb64(mac)):
            return None
        fields: dict[str, Any] = json.loads(_unb64(payload))
    except (ValueError, TypeError):
        return None
    if now - float(fields.get("t", 0)) > max_age:
        return None
    return fields


class Unsubscribe:
    Settings = UnsubscribeSettings

    def __init__(self) -> None:
        self.context: PluginContext | None = None

    @property
    def settings(self) -> UnsubscribeSettings:
        assert self.context is not None
        settings: UnsubscribeSettings = self.context.settings
        return settings

    @hookimpl
    def gateway_startup(self, context: PluginContext) -> None:
        settings: UnsubscribeSettings = context.settings
        if not settings.secret or not context.public_url.startswith(("https://", "http://")):
            context.log(
                "plugin_inactive",
                why="set [plugin.unsubscribe] secret and [http] public_url to add "
                "List-Unsubscribe headers",
            )
            return
        if len(settings.secret) < 16:
            raise ValueError("[plugin.unsubscribe] secret must be at least 16 characters")
        self.context = context
        context.http.add("POST", PATH + "/{token}", self.http_post)
        context.http.add("GET", PATH + "/{token}", self.http_get)

    @hookimpl
    def message_headers(
        self, envelope: EnvelopeInfo, message: MessageInfo
    ) -> list[tuple[str, str]] | None:
        context = self.context
        if context is None:
            return None  # inactive
        settings = self.settings
        if envelope.stream not in settings.streams or message.get("List-Unsubscribe"):
            return None
        if len(envelope.recipients) != 1:
            context.log("unsubscribe_skipped", qid=envelope.qid, why="several recipients")
            return None
        list_id = message.get("List-Id") or ""
        list_id = list_id.rpartition("<")[2].rstrip(">").strip() or envelope.sender_domain
        token = make_token(
            settings.secret, envelope.recipients[0], list_id, envelope.sender_domain, time.time()
        )
        links = [f"<{context.public_url.rstrip('/')}{PATH}/{token}>"]
        if settings.mailto:
            links.append(f"<mailto:{settings.mailto}?subject=unsubscribe%20{token}>")
        return [("List-Unsubscribe", ", ".join(links)), ("List-Unsubscribe-Post", ONE_CLICK)]

    def _fields(self, request: web.Request) -> dict[str, Any] | None:
        settings = self.settings
        return read_token(
            settings.secret, request.match_info["token"], settings.max_age, time.time()
        )

    async def http_post(self, request: web.Request) -> web.Response:
        fields = self._fields(request)
        if fields is None:
            return web.Response(status=403, text="This unsubscribe link is not valid.\n")
        body = (await request.text()).strip()
        if ONE_CLICK not in body and "confirm=yes" not in body:
            return web.Response(status=400, text=f"Expected the body {ONE_CLICK}\n")
        assert self.context is not None
        method = "one-click" if ONE_CLICK in body else "web"
        await self.context.emit(
            "feedback_unsubscribe",
            recipient=fields["r"],
            list_id=fields["l"],
            sender_domain=fields["d"],
            method=method,
        )
        self.context.log("unsubscribed", recipient=fields["r"], list_id=fields["l"], method=method)
        return web.Response(text="You are unsubscribed.\n")

    async def http_get(self, request: web.Request) -> web.Response:
        fields = self._fields(request)
        if fields is None:
            return web.Response(status=403, text="This unsubscribe link is not valid.\n")
        page = (
            "<!doctype html><title>Unsubscribe</title>"
            f"<p>Unsubscribe {html.escape(fields['r'])} from {html.escape(fields['l'])}?</p>"
            '<form method="post"><input type="hidden" name="confirm" value="yes">'
            '<button type="submit">Unsubscribe</button></form>'
        )
        return web.Response(text=page, content_type="text/html")


plugin = Unsubscribe()
