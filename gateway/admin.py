"""Operator controls over HTTP (on the `[admin]` listener, behind its bearer
token), and suspensions that last until an operator lifts them.

    GET  /admin/holds                 every suspension: scope, until, reason
    POST /admin/suspend   {"scope": {"site"|"provider"|"source"|"tenant"|"campaign"|
                           "sender_domain": ...}, "seconds": N (absent: until resumed),
                           "reason": "..."}
    POST /admin/resume    {"scope": {...}}
    GET  /admin/queues[?by=tenant|campaign|stream|sender_domain|domain|source]
                                      sites with mail ready, their holds and waits;
                                      or a summary by the given field
    POST /admin/messages/remove {"match": {"tenant": ..., "domain": ...},
                                 "action": "bounce"|"delete", "reason": ...}
    POST /admin/messages?sender=S&rcpt=R[&rcpt=R2]   body: the raw message
                                      injected like an SMTP submission; its queue ID
    GET  /admin/explain/{qid}         why a message waits

Suspensions are kept in the policy store (`gateway/suspensions.py`), so they
hold on every node of a fleet and across restarts.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import time
from typing import Any

from aiohttp import web

from gateway import __version__
from gateway.accounting import account
from gateway.config import Config
from gateway.delivery.engine import DeliveryEngine
from gateway.delivery.holds import FIELDS, Scope
from gateway.ingress import QUEUED_AS, IngressHandler, Submission
from gateway.openapi import document
from gateway.plugin import SessionInfo
from gateway.secret_files import warn_if_exposed
from gateway.suspensions import HoldKeeper


def admin_token(config: Config) -> str:
    """`[admin] token`, else the token file's, else a new random one written there
    (mode 0600), so the CLI on the same host finds it."""
    if config.admin.token:
        return config.admin.token
    path = config.admin_token_file
    if path.exists():
        warn_if_exposed(path, "admin token")
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token


def _scope(body: Any) -> Scope:
    fields = body.get("scope") if isinstance(body, dict) else None
    if not isinstance(fields, dict) or not fields:
        raise ValueError(f"scope must be an object with some of: {', '.join(FIELDS)}")
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown scope fields: {', '.join(sorted(unknown))}")
    return Scope(**{k: str(v) for k, v in fields.items()})


def add_routes(
    app: Any, engine: DeliveryEngine, keeper: HoldKeeper, ingress: IngressHandler
) -> None:
    """Register the admin routes on the HTTP listener (`app.add(method, path, handler)`)."""

    async def inject(request: web.Request) -> web.Response:
        """POST /admin/messages?sender=S&rcpt=R&rcpt=R2 with the raw message as body:
        the same checks, signing and queueing as SMTP; the queue ID back."""
        sender = request.query.get("sender", "")
        recipients = request.query.getall("rcpt", [])
        if not recipients or any("@" not in r for r in recipients):
            return web.json_response({"error": "one rcpt=address or more"}, status=400)
        if sender and "@" not in sender:
            return web.json_response({"error": "sender must be user@domain or empty"}, status=400)
        raw = await request.read()
        session = SessionInfo(request.remote or "", "http-injection", "admin")
        submission = Submission(sender, recipients, session, not raw.isascii(), "HTTP")
        refused = {}
        for rcpt in recipients:
            refusal = await ingress.check_recipient(submission, rcpt)
            if refusal:
                refused[rcpt] = refusal
        accepted = [r for r in recipients if r not in refused]
        if not accepted:
            return web.json_response({"qid": None, "refused": refused}, status=422)
        submission.recipients = accepted
        reply = await ingress.accept(submission, raw)
        found = QUEUED_AS.search(reply)
        account("admin", action="inject", sender=sender, recipients=accepted, reply=reply)
        status = 200 if found else (503 if reply.startswith("4") else 422)
        return web.json_response(
            {"qid": found.group(1) if found else None, "refused": refused, "reply": reply},
            status=status,
        )

    async def holds(request: web.Request) -> web.Response:
        now = time.time()
        return web.json_response(
            [
                {
                    "scope": h.scope.fields(),
                    "until": None if math.isinf(h.until) else h.until,
                    "reason": h.reason,
                }
                for h in engine.holds.active(now)
            ]
        )

    async def read(request: web.Request) -> Any:
        try:
            return await request.json()
        except json.JSONDecodeError as exc:
            raise web.HTTPBadRequest(text=f"not JSON: {exc}") from None

    async def suspend(request: web.Request) -> web.Response:
        body = await read(request)
        try:
            scope = _scope(body)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        seconds = body.get("seconds")
        until = time.time() + float(seconds) if seconds is not None else math.inf
        reason = str(body.get("reason") or "suspended by an operator")
        keeper.suspend(scope, until, reason)
        account("admin", action="suspend", scope=scope.fields(), until=until, reason=reason)
        return web.json_response({"suspended": scope.fields()})

    async def resume(request: web.Request) -> web.Response:
        try:
            scope = _scope(await read(request))
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        resumed = keeper.resume(scope)
        account("admin", action="resume", scope=scope.fields(), resumed=resumed)
        return web.json_response({"resumed": resumed})

    async def queues(request: web.Request) -> web.Response:
        """?by=tenant|campaign|stream|sender_domain|domain|source for a summary by that."""
        by = request.query.get("by")
        if by:
            try:
                return web.json_response(engine.summary(by))
            except ValueError as exc:
                return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"sites": engine.queues(), "scheduled": engine.scheduled()})

    async def drop(request: web.Request) -> web.Response:
        """{"match": {...}, "action": "bounce" | "delete", "reason": "..."}."""
        body = await read(request)
        match = body.get("match") if isinstance(body, dict) else None
        action = body.get("action") if isinstance(body, dict) else None
        known = {"qid", "sender", "sender_domain", "tenant", "campaign", "stream", "domain"}
        if not isinstance(match, dict) or not match or set(match) - known:
            return web.json_response({"error": f"match: some of {sorted(known)}"}, status=400)
        if action not in ("bounce", "delete"):
            return web.json_response({"error": 'action: "bounce" or "delete"'}, status=400)
        reason = str(body.get("reason") or "removed from the queue by an operator")
        result = await engine.drop(
            {k: str(v) for k, v in match.items()}, action == "bounce", reason
        )
        return web.json_response(result)

    async def explain(request: web.Request) -> web.Response:
        found = engine.explain(request.match_info["qid"])
        if found is None:
            return web.json_response({"error": "no such message in the queue"}, status=404)
        return web.json_response(found)

    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(document(__version__))

    app.add("GET", "/admin/openapi.json", openapi)
    app.add("POST", "/admin/messages", inject)
    app.add("GET", "/admin/holds", holds)
    app.add("POST", "/admin/suspend", suspend)
    app.add("POST", "/admin/resume", resume)
    app.add("GET", "/admin/queues", queues)
    app.add("POST", "/admin/messages/remove", drop)
    app.add("GET", "/admin/explain/{qid}", explain)
