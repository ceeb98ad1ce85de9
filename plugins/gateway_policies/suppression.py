"""Suppression lists: addresses the gateway refuses to send to.

One global list and one list per sender domain. An entry has a reason
(hard-bounce, complaint, unsubscribe, manual), a time and a source, and may
expire (per reason). Recipients on a list are refused at RCPT with
550 5.7.1, so the client learns at once and the others of the transaction
go on. Hard bounces (classes in `hard_classes`, permanent failures only) add
global entries; complaints and unsubscribes add entries for their sender
domain.

CSV import and export, also while the gateway runs:

    python -m gateway_policies.suppression export --config gateway.toml > list.csv
    python -m gateway_policies.suppression import --config gateway.toml list.csv

Columns: address, scope ("*" or a sender domain), reason, at (Unix time),
source, expires_at (empty: never).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from typing import Any, Literal

from aiohttp import web

from gateway import (
    Decision,
    Delivery,
    Duration,
    EnvelopeInfo,
    PluginContext,
    PluginSettings,
    PolicyStore,
    csv_response,
    export_csv,
    hookimpl,
    import_csv,
    load_config,
    open_store,
    request_lines,
)

NAMESPACE = "suppression"
GLOBAL = "*"
Reason = Literal["hard-bounce", "complaint", "unsubscribe", "manual"]
REASONS: tuple[Reason, ...] = ("hard-bounce", "complaint", "unsubscribe", "manual")
FIELDS = ["address", "scope", "reason", "at", "source", "expires_at"]


class SuppressionSettings(PluginSettings):
    # How long an entry lasts, per reason ("30d"); absent: forever.
    expire: dict[Reason, Duration] = {}
    # Bounce classes (of permanent failures) that suppress the address everywhere.
    hard_classes: list[str] = ["invalid-recipient", "bad-domain"]


def key(scope: str, address: str) -> str:
    return f"{scope}|{address.strip().lower()}"


class Suppression:
    Settings = SuppressionSettings

    def __init__(self) -> None:
        self.store: PolicyStore | None = None
        self.settings = SuppressionSettings()
        self.context: PluginContext | None = None

    @hookimpl
    def gateway_startup(self, context: PluginContext) -> None:
        self.context = context
        self.store = context.store
        self.settings = context.settings
        context.admin.add("GET", "/suppression", self.http_search)
        context.admin.add("POST", "/suppression", self.http_add)
        context.admin.add("DELETE", "/suppression", self.http_delete)
        context.admin.add("GET", "/suppression/export", self.http_export)
        context.admin.add("POST", "/suppression/import", self.http_import)

    def lookup(self, address: str, sender_domain: str) -> dict[str, object] | None:
        """The entry that suppresses `address` for mail from `sender_domain`, if any."""
        assert self.store is not None
        return self.store.get(NAMESPACE, key(GLOBAL, address)) or (
            self.store.get(NAMESPACE, key(sender_domain, address)) if sender_domain else None
        )

    async def add(self, address: str, scope: str, reason: Reason, source: str) -> None:
        assert self.store is not None
        now = time.time()
        lifetime = self.settings.expire.get(reason)
        expires = now + lifetime if lifetime else None
        record = {"reason": reason, "at": now, "source": source, "expires_at": expires}
        await self.store.put(NAMESPACE, key(scope, address), record, expires)
        if self.context:
            self.context.log(
                "suppressed", address=address, scope=scope, reason=reason, source=source
            )

    @hookimpl
    def smtp_rcpt_to(self, envelope: EnvelopeInfo, recipient: str) -> Decision | None:
        entry = self.lookup(recipient, envelope.sender_domain)
        if entry is None:
            return None
        if self.context:
            self.context.count("suppression_hit", kind=str(entry["reason"]))
        return Decision.reject(f"Recipient is on a suppression list ({entry['reason']})")

    @hookimpl
    async def delivery_bounced(self, delivery: Delivery) -> None:
        if delivery.kind == "bounced" and delivery.bounce_class in self.settings.hard_classes:
            source = f"bounce {delivery.qid}: {delivery.reply[:200]}"
            await self.add(delivery.recipient, GLOBAL, "hard-bounce", source)

    @hookimpl
    async def feedback_complaint(self, recipient: str, sender_domain: str, qid: str) -> None:
        await self.add(recipient, sender_domain or GLOBAL, "complaint", f"complaint {qid}")

    @hookimpl
    async def feedback_unsubscribe(
        self, recipient: str, list_id: str, sender_domain: str, method: str
    ) -> None:
        await self.add(recipient, sender_domain or GLOBAL, "unsubscribe", f"{method} {list_id}")

    # -- the admin API (on the [admin] listener) -------------------------------------

    async def http_search(self, request: web.Request) -> web.Response:
        """?address=A (its entries in every list), ?scope=S&reason=R&limit=N."""
        assert self.store is not None
        query = request.query
        address = query.get("address", "").strip().lower()
        scope, reason = query.get("scope"), query.get("reason")
        limit = min(int(query.get("limit", "100")), 10_000)
        found = []
        prefix = f"{scope.lower()}|" if scope else ""
        for k, record in self.store.scan(NAMESPACE, prefix):
            entry_scope, _, entry_address = k.partition("|")
            if address and entry_address != address:
                continue
            if reason and record.get("reason") != reason:
                continue
            found.append({"address": entry_address, "scope": entry_scope, **record})
            if len(found) >= limit:
                break
        return web.json_response(found)

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except json.JSONDecodeError as exc:
            raise web.HTTPBadRequest(text=f"not JSON: {exc}") from None
        if not isinstance(body, dict) or "@" not in str(body.get("address", "")):
            raise web.HTTPBadRequest(text='{"error": "address is required"}')
        return body

    async def http_add(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        reason = body.get("reason", "manual")
        if reason not in REASONS:
            return web.json_response({"error": f"reason: one of {REASONS}"}, status=400)
        scope = str(body.get("scope") or GLOBAL).lower()
        await self.add(str(body["address"]), scope, reason, str(body.get("source", "admin api")))
        return web.json_response({"suppressed": body["address"], "scope": scope})

    async def http_delete(self, request: web.Request) -> web.Response:
        assert self.store is not None
        body = await self._body(request)
        scope = str(body.get("scope") or GLOBAL).lower()
        removed = await self.store.delete(NAMESPACE, key(scope, str(body["address"])))
        return web.json_response({"removed": removed})

    async def http_export(self, request: web.Request) -> web.StreamResponse:
        assert self.store is not None
        return await csv_response(request, export_rows(self.store))

    async def http_import(self, request: web.Request) -> web.Response:
        assert self.store is not None
        try:
            count = await import_rows(self.store, request_lines(request))
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if self.context:
            self.context.log("suppression_import", rows=count)
        return web.json_response({"imported": count})


plugin = Suppression()


# -- CSV import and export ----------------------------------------------------


def _row(k: str, record: Mapping[str, Any]) -> dict[str, Any]:
    scope, _, address = k.partition("|")
    return {"address": address, "scope": scope, **record}


def _item(row: dict[str, str], line: int) -> tuple[str, dict[str, Any], float | None]:
    reason = row.get("reason") or "manual"
    if reason not in REASONS:
        raise ValueError(f"line {line}: reason must be one of {', '.join(REASONS)}")
    address = (row.get("address") or "").strip()
    if "@" not in address:
        raise ValueError(f"line {line}: not an address: {address!r}")
    expires = float(row["expires_at"]) if row.get("expires_at") else None
    record = {
        "reason": reason,
        "at": float(row.get("at") or time.time()),
        "source": row.get("source") or "csv import",
        "expires_at": expires,
    }
    return key(row.get("scope") or GLOBAL, address), record, expires


def export_rows(store: PolicyStore) -> Iterator[str]:
    """The suppression lists as CSV text, a header and then one line per entry."""
    return export_csv(store, NAMESPACE, FIELDS, _row)


async def import_rows(store: PolicyStore, lines: AsyncIterator[str] | Iterable[str]) -> int:
    """Import CSV lines (a header first); a bad row stops with its line number."""
    return await import_csv(store, NAMESPACE, lines, _item)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway_policies.suppression")
    parser.add_argument("command", choices=["import", "export"])
    parser.add_argument("file", nargs="?", help="CSV file to import (- for stdin)")
    parser.add_argument("--config", help="the gateway's configuration file")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    store = open_store(config.store_settings)
    try:
        if args.command == "export":
            count = -1  # the header
            for chunk in export_rows(store):
                sys.stdout.write(chunk)
                count += chunk.count("\n")
        elif args.file in (None, "-"):
            count = asyncio.run(import_rows(store, iter(sys.stdin)))
        else:
            with open(args.file, newline="") as handle:
                count = asyncio.run(import_rows(store, iter(handle)))
    except ValueError as exc:
        print(f"suppression: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    print(f"suppression: {args.command}ed {count} entries", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
