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
import csv
import sys
import time
from typing import Literal

from gateway import (
    Decision,
    Delivery,
    Duration,
    EnvelopeInfo,
    PluginContext,
    PluginSettings,
    PolicyStore,
    hookimpl,
    load_config,
    open_store,
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


plugin = Suppression()


# -- CSV import and export ----------------------------------------------------


def export_csv(store: PolicyStore, out: object) -> int:
    writer = csv.DictWriter(out, FIELDS)  # type: ignore[arg-type]
    writer.writeheader()
    count = 0
    for k, record in store.scan(NAMESPACE):
        scope, _, address = k.partition("|")
        writer.writerow({"address": address, "scope": scope, **record})
        count += 1
    return count


async def import_csv(store: PolicyStore, lines: list[str]) -> int:
    items = []
    for n, row in enumerate(csv.DictReader(lines), start=2):
        reason = row.get("reason") or "manual"
        if reason not in REASONS:
            raise ValueError(f"line {n}: reason must be one of {', '.join(REASONS)}")
        if "@" not in (row.get("address") or ""):
            raise ValueError(f"line {n}: not an address: {row.get('address')!r}")
        expires = float(row["expires_at"]) if row.get("expires_at") else None
        record = {
            "reason": reason,
            "at": float(row.get("at") or time.time()),
            "source": row.get("source") or "csv import",
            "expires_at": expires,
        }
        items.append((key(row.get("scope") or GLOBAL, row["address"]), record, expires))
    await store.put_many(NAMESPACE, items)
    return len(items)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway_policies.suppression")
    parser.add_argument("command", choices=["import", "export"])
    parser.add_argument("file", nargs="?", help="CSV file to import (- for stdin)")
    parser.add_argument("--config", help="the gateway's configuration file")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    store = open_store(str(config.store_path))
    try:
        if args.command == "export":
            count = export_csv(store, sys.stdout)
        else:
            if args.file in (None, "-"):
                text = sys.stdin.read()
            else:
                with open(args.file, newline="") as handle:
                    text = handle.read()
            count = asyncio.run(import_csv(store, text.splitlines()))
    except ValueError as exc:
        print(f"suppression: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    print(f"suppression: {args.command}ed {count} entries", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
