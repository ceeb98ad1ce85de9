"""The OpenAPI 3.1 description of the admin listener, served at
/admin/openapi.json. tests/test_admin_api.py checks that every route the
listener has is described here and nothing else is."""

from __future__ import annotations

from typing import Any

JSON = {"application/json": {"schema": {"type": "object"}}}
CSV = {"text/csv": {"schema": {"type": "string"}}}
SCOPE = {
    "type": "object",
    "description": "Any of site, provider, source, tenant, campaign, sender_domain.",
    "additionalProperties": {"type": "string"},
}


def _op(summary: str, body: dict[str, Any] | None = None, answer: Any = JSON, **extra: Any) -> Any:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            "200": {"description": "OK", "content": answer},
            "400": {"description": "A bad request; the error says what"},
            "401": {"description": "No or a wrong bearer token"},
        },
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": body}
    op.update(extra)
    return op


def _query(*names: str) -> list[dict[str, Any]]:
    return [{"name": n, "in": "query", "schema": {"type": "string"}} for n in names]


PATHS: dict[str, dict[str, Any]] = {
    "/metrics": {"get": _op("Prometheus metrics (no token unless configured)", answer=CSV)},
    "/admin/openapi.json": {"get": _op("This description")},
    "/admin/holds": {
        "get": _op("Suspensions in force: scope, until (null: until resumed), reason")
    },
    "/admin/suspend": {
        "post": _op(
            "Suspend traffic: {scope, seconds (absent: until resumed), reason}",
            {"application/json": {"schema": {"type": "object", "properties": {"scope": SCOPE}}}},
        )
    },
    "/admin/resume": {
        "post": _op(
            "Lift a suspension: {scope}",
            {"application/json": {"schema": {"type": "object", "properties": {"scope": SCOPE}}}},
        )
    },
    "/admin/queues": {
        "get": _op(
            "Sites with mail ready, holds and waits; with ?by=, a summary by tenant, "
            "campaign, stream, sender_domain, domain or source",
            parameters=_query("by"),
        )
    },
    "/admin/explain/{qid}": {
        "get": _op(
            "Why a message waits: per recipient its state, next attempt, site, limits, holds",
            parameters=[
                {"name": "qid", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
        )
    },
    "/admin/messages": {
        "post": _op(
            "Inject a raw RFC 5322 message: checked, signed and queued as over SMTP",
            {"message/rfc822": {"schema": {"type": "string"}}},
            parameters=[
                *_query("sender"),
                {"name": "rcpt", "in": "query", "required": True, "schema": {"type": "string"}},
            ],
        )
    },
    "/admin/messages/remove": {
        "post": _op(
            "Bounce or delete queued messages: {match: {qid|sender|sender_domain|tenant|"
            'campaign|stream|domain}, action: "bounce"|"delete", reason}',
            JSON,
        )
    },
    "/suppression": {
        "get": _op(
            "Search: ?address=, ?scope=, ?reason=, ?limit=",
            parameters=_query("address", "scope", "reason", "limit"),
        ),
        "post": _op("Suppress {address, scope, reason, source}", JSON),
        "delete": _op("Unsuppress {address, scope}", JSON),
    },
    "/suppression/export": {"get": _op("Every entry as CSV, streamed", answer=CSV)},
    "/suppression/import": {"post": _op("Import CSV (address, scope, reason, ...), streamed", CSV)},
    "/consent": {
        "get": _op(
            "Search: ?recipient=, ?list=, ?limit=", parameters=_query("recipient", "list", "limit")
        ),
        "post": _op("Record {recipient, list, method, source, confirmed_at}", JSON),
        "delete": _op("Withdraw {recipient, list}", JSON),
    },
    "/consent/confirm": {"post": _op("Record a double opt-in confirmation", JSON)},
    "/consent/export": {"get": _op("Every record as CSV, streamed", answer=CSV)},
    "/consent/import": {
        "post": _op("Import CSV (recipient, list, method, recorded_at, ...), streamed", CSV)
    },
}


def document(version: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Deliverability Gateway admin API", "version": version},
        "components": {
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"token": []}],
        "paths": PATHS,
    }
