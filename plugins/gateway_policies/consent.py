"""Consent: marketing mail only to recipients who agreed to it, with proof.

A consent record is kept per recipient and list (a List-Id, or the sender
domain when there is none): method (double-opt-in, single-opt-in,
imported), when it was confirmed, and where it came from (IP address or
URL of the sign-up form). Mail of a marketing stream to a recipient without
a valid record is refused with 550 5.7.1: at RCPT when the stream is known
from the sender (`sender_streams`), else at the end of DATA, when the
X-Gateway-Stream header tells it (then the whole message is refused, naming
how many recipients lack consent). Transactional streams are never checked.

Recording, over the [admin] listener (with its bearer token):

    GET  /consent?recipient=R&list=L   the records (search)
    GET  /consent/export               every record, CSV
    POST /consent/import               records from CSV (the export's columns)
    POST /consent          {"recipient", "list", "method", "source", "confirmed_at"?}
    POST /consent/confirm  {"recipient", "list", "source"}   (a double opt-in click)
    DELETE /consent        {"recipient", "list"}             (withdrawn)
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, Literal

from aiohttp import web

from gateway import (
    Decision,
    Duration,
    EnvelopeInfo,
    MessageInfo,
    PluginContext,
    PluginSettings,
    PolicyStore,
    SessionInfo,
    csv_response,
    export_csv,
    hookimpl,
    import_csv,
    request_lines,
)

NAMESPACE = "consent"
Method = Literal["double-opt-in", "single-opt-in", "imported"]
METHODS = ("double-opt-in", "single-opt-in", "imported")


class ConsentSettings(PluginSettings):
    # Streams that need consent; any other stream (e.g. "transactional") is exempt.
    marketing_streams: list[str] = ["marketing", "newsletter", "bulk"]
    # Stream by sender address or sender domain, so RCPT can decide.
    sender_streams: dict[str, str] = {}
    # Stream by authenticated SMTP user, over the above.
    user_streams: dict[str, str] = {}
    # Only confirmed double opt-in counts (not single opt-in, not imported).
    require_confirmation: bool = False
    # Consent older than this ("730d") no longer counts (absent: no limit).
    max_age: Duration | None = None


def key(list_id: str, recipient: str) -> str:
    return f"{list_id.strip().lower()}|{recipient.strip().lower()}"


class Consent:
    Settings = ConsentSettings

    def __init__(self) -> None:
        self.settings = ConsentSettings()
        self.store: PolicyStore | None = None

    @hookimpl
    def gateway_startup(self, context: PluginContext) -> None:
        self.settings = context.settings
        self.store = context.store
        context.admin.add("POST", "/consent", self.http_record)
        context.admin.add("POST", "/consent/confirm", self.http_confirm)
        context.admin.add("DELETE", "/consent", self.http_withdraw)
        context.admin.add("GET", "/consent", self.http_search)
        context.admin.add("GET", "/consent/export", self.http_export)
        context.admin.add("POST", "/consent/import", self.http_import)

    # -- the checks ---------------------------------------------------------------

    def valid(self, recipient: str, lists: list[str]) -> bool:
        assert self.store is not None
        for list_id in lists:
            record = self.store.get(NAMESPACE, key(list_id, recipient))
            if record is None or record.get("withdrawn_at"):
                continue
            if not record.get("confirmed_at"):
                continue  # a double opt-in sign-up not confirmed (yet)
            if self.settings.require_confirmation and record.get("method") != "double-opt-in":
                continue
            at = record.get("confirmed_at") or record.get("recorded_at") or 0
            if self.settings.max_age and at < time.time() - self.settings.max_age:
                continue
            return True
        return False

    def stream_of_sender(self, session: SessionInfo, envelope: EnvelopeInfo) -> str:
        """The stream as known at RCPT: by authenticated user, else by sender."""
        if session.user and session.user in self.settings.user_streams:
            return self.settings.user_streams[session.user]
        streams = self.settings.sender_streams
        return streams.get(envelope.sender.lower()) or streams.get(envelope.sender_domain, "")

    @hookimpl
    def smtp_rcpt_to(
        self, session: SessionInfo, envelope: EnvelopeInfo, recipient: str
    ) -> Decision | None:
        if self.stream_of_sender(session, envelope) not in self.settings.marketing_streams:
            return None
        if self.valid(recipient, [envelope.sender_domain]):
            return None
        return Decision.reject("No consent on record for marketing mail to this recipient")

    @hookimpl
    def smtp_data(
        self, session: SessionInfo, envelope: EnvelopeInfo, message: MessageInfo
    ) -> Decision | None:
        if self.stream_of_sender(session, envelope):
            return None  # decided per recipient at RCPT
        if envelope.stream not in self.settings.marketing_streams:
            return None
        lists = [envelope.sender_domain]
        list_id = message.get("List-Id")
        if list_id:
            lists.insert(0, list_id.rpartition("<")[2].rstrip(">").strip())
        missing = [r for r in envelope.recipients if not self.valid(r, lists)]
        if not missing:
            return None
        return Decision.reject(
            f"No consent on record for marketing mail to {len(missing)} of "
            f"{len(envelope.recipients)} recipients (first: {missing[0]})"
        )

    # -- recording ----------------------------------------------------------------

    async def record(self, body: dict[str, Any], confirm: bool) -> dict[str, Any]:
        assert self.store is not None
        recipient, list_id = str(body.get("recipient", "")), str(body.get("list", ""))
        if "@" not in recipient or not list_id:
            raise ValueError("recipient (an address) and list are required")
        now = time.time()
        k = key(list_id, recipient)
        record = dict(self.store.get(NAMESPACE, k) or {})
        if confirm:
            if not record:
                raise LookupError("no sign-up on record to confirm")
            record.update(
                method="double-opt-in", confirmed_at=now, confirm_source=body.get("source")
            )
        else:
            method = body.get("method", "single-opt-in")
            if method not in METHODS:
                raise ValueError(f"method must be one of {', '.join(METHODS)}")
            record = {
                "method": method,
                "recorded_at": now,
                "confirmed_at": body.get("confirmed_at")
                or (now if method != "double-opt-in" else None),
                "source": str(body.get("source", "")),
            }
        await self.store.put(NAMESPACE, k, record)
        return record

    async def _json(self, request: web.Request, confirm: bool) -> web.Response:
        try:
            body = await request.json()
            record = await self.record(body if isinstance(body, dict) else {}, confirm)
        except (ValueError, json.JSONDecodeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except LookupError as exc:
            return web.json_response({"error": str(exc)}, status=404)
        return web.json_response(record)

    async def http_record(self, request: web.Request) -> web.Response:
        return await self._json(request, confirm=False)

    async def http_confirm(self, request: web.Request) -> web.Response:
        return await self._json(request, confirm=True)

    async def http_withdraw(self, request: web.Request) -> web.Response:
        assert self.store is not None
        try:
            body = await request.json()
            k = key(str(body["list"]), str(body["recipient"]))
        except (ValueError, KeyError, TypeError, json.JSONDecodeError):
            return web.json_response({"error": "recipient and list are required"}, status=400)
        record = self.store.get(NAMESPACE, k)
        if record is None:
            return web.json_response({"error": "no consent on record"}, status=404)
        await self.store.put(NAMESPACE, k, {**record, "withdrawn_at": time.time()})
        return web.json_response({"withdrawn": True})

    async def http_search(self, request: web.Request) -> web.Response:
        """?recipient=R and/or ?list=L (limit=N): the consent records."""
        assert self.store is not None
        recipient = request.query.get("recipient", "").strip().lower()
        list_id = request.query.get("list", "").strip().lower()
        limit = min(int(request.query.get("limit", "100")), 10_000)
        found = []
        for k, record in self.store.scan(NAMESPACE, f"{list_id}|" if list_id else ""):
            entry_list, _, entry_recipient = k.partition("|")
            if recipient and entry_recipient != recipient:
                continue
            found.append({"recipient": entry_recipient, "list": entry_list, **record})
            if len(found) >= limit:
                break
        return web.json_response(found)

    async def http_export(self, request: web.Request) -> web.StreamResponse:
        """Every record as CSV, streamed (proof of consent for an audit)."""
        assert self.store is not None
        return await csv_response(request, export_csv(self.store, NAMESPACE, COLUMNS, _row))

    async def http_import(self, request: web.Request) -> web.Response:
        """Records from CSV (the export's columns), e.g. moved from an ESP or CRM."""
        assert self.store is not None
        try:
            count = await import_csv(self.store, NAMESPACE, request_lines(request), _item)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"imported": count})


COLUMNS = ["recipient", "list", "method", "recorded_at", "confirmed_at", "source", "withdrawn_at"]


def _row(k: str, record: Mapping[str, Any]) -> dict[str, Any]:
    entry_list, _, entry_recipient = k.partition("|")
    return {"recipient": entry_recipient, "list": entry_list, **record}


def _time(row: dict[str, str], column: str, line: int) -> float | None:
    value = (row.get(column) or "").strip()
    try:
        return float(value) if value else None
    except ValueError:
        raise ValueError(f"line {line}: {column} must be Unix time, not {value!r}") from None


def _item(row: dict[str, str], line: int) -> tuple[str, dict[str, Any], None]:
    """A CSV row as a record. Without confirmed_at, a record other than a
    double opt-in counts from recorded_at (or now): the importer vouches for it."""
    recipient, list_id = (row.get("recipient") or "").strip(), (row.get("list") or "").strip()
    if "@" not in recipient or not list_id:
        raise ValueError(f"line {line}: recipient (an address) and list are required")
    method = (row.get("method") or "imported").strip()
    if method not in METHODS:
        raise ValueError(f"line {line}: method must be one of {', '.join(METHODS)}")
    recorded = _time(row, "recorded_at", line) or time.time()
    confirmed = _time(row, "confirmed_at", line)
    if confirmed is None and method != "double-opt-in":
        confirmed = recorded
    record: dict[str, Any] = {
        "method": method,
        "recorded_at": recorded,
        "confirmed_at": confirmed,
        "source": row.get("source") or "csv import",
    }
    withdrawn = _time(row, "withdrawn_at", line)
    if withdrawn is not None:
        record["withdrawn_at"] = withdrawn
    return key(list_id, recipient), record, None


plugin = Consent()
