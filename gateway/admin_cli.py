"""`gateway` verbs that talk to a running gateway's admin API.

    gateway queue [--by tenant|campaign|stream|sender_domain|domain|source]
    gateway remove --tenant T [--domain D ...] --action bounce|delete
    gateway explain QID                   why a message waits
    gateway holds                         suspensions in force
    gateway suspend --site S [--seconds N] [--reason R]   (also --provider,
                    --source, --tenant, --campaign, --sender-domain)
    gateway resume  --site S ...          lift one
    gateway suppression search ADDRESS | add ADDRESS [--scope D] [--reason R]
                    | remove ADDRESS [--scope D] | import FILE | export [FILE]
    gateway consent search RECIPIENT [--list L] | add RECIPIENT --list L
                    [--method M] [--source S] | confirm RECIPIENT --list L
                    | withdraw RECIPIENT --list L | import FILE | export [FILE]
    gateway inject --from S --to R [--to R2] FILE

They find the API and its token in the configuration (`[admin] listen`,
`token` or `token_file`). Imports and exports show a progress bar on a
terminal.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlencode

from gateway.admin import admin_token
from gateway.config import Config, parse_hostport
from gateway.delivery.holds import FIELDS

CHUNK = 256 * 1024


class AdminClient:
    def __init__(self, config: Config) -> None:
        self.host, self.port = parse_hostport(config.admin.listen, 8026)
        self.token = admin_token(config)

    def _connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=3600)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        conn = self._connection()
        conn.request(method, path, body=data, headers=self._headers())
        return self._answer(conn.getresponse())

    def _headers(self, kind: str = "application/json") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Content-Type": kind}

    @staticmethod
    def _answer(response: http.client.HTTPResponse) -> Any:
        raw = response.read()
        answer = json.loads(raw) if raw and raw[:1] in (b"{", b"[") else raw.decode()
        if response.status >= 400:
            message = answer.get("error", answer) if isinstance(answer, dict) else answer
            raise SystemExit(f"gateway: {response.status}: {message}")
        return answer

    def upload(self, path: str, source: IO[bytes], size: int, kind: str) -> Any:
        """POST a file, streamed, with a progress bar."""
        conn = self._connection()
        conn.putrequest("POST", path)
        for name, value in {**self._headers(kind), "Content-Length": str(size)}.items():
            conn.putheader(name, value)
        conn.endheaders()
        sent = 0
        while chunk := source.read(CHUNK):
            conn.send(chunk)
            sent += len(chunk)
            progress("uploading", sent, size)
        progress_done()
        return self._answer(conn.getresponse())

    def download(self, path: str, out: IO[bytes]) -> int:
        conn = self._connection()
        conn.request("GET", path, headers=self._headers())
        response = conn.getresponse()
        if response.status >= 400:
            self._answer(response)
        got = 0
        while chunk := response.read(CHUNK):
            out.write(chunk)
            got += len(chunk)
            progress("downloading", got, 0)
        progress_done()
        return got


def progress(label: str, done: int, total: int) -> None:
    if not sys.stderr.isatty():
        return
    if total:
        width = 30
        filled = int(width * done / total)
        bar = "#" * filled + "-" * (width - filled)
        sys.stderr.write(f"\r{label} [{bar}] {done / total:6.1%} {done / 1e6:8.1f} MB")
    else:
        sys.stderr.write(f"\r{label} {done / 1e6:8.1f} MB")
    sys.stderr.flush()


def progress_done() -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\n")


def table(rows: Iterable[dict[str, Any]], columns: list[str]) -> str:
    """Rows as an aligned text table with a header."""
    cells = [[str(r.get(c, "")) if r.get(c) is not None else "-" for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def add_parsers(sub: Any) -> None:
    def with_config(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("--config", type=Path, help="TOML configuration file")
        return parser

    queue = with_config(sub.add_parser("queue", help="sites with mail waiting"))
    queue.add_argument(
        "--by", choices=["tenant", "campaign", "stream", "sender_domain", "domain", "source"]
    )
    remove = with_config(sub.add_parser("remove", help="bounce or delete queued messages"))
    for field in ("qid", "sender", "sender_domain", "tenant", "campaign", "stream", "domain"):
        remove.add_argument(f"--{field.replace('_', '-')}", dest=field)
    remove.add_argument("--action", choices=["bounce", "delete"], required=True)
    remove.add_argument("--reason", default="")
    with_config(sub.add_parser("holds", help="suspensions in force"))
    explain = with_config(sub.add_parser("explain", help="why a message waits"))
    explain.add_argument("qid")
    for verb in ("suspend", "resume"):
        parser = with_config(sub.add_parser(verb, help=f"{verb} traffic"))
        for field in FIELDS:
            parser.add_argument(f"--{field.replace('_', '-')}", dest=field)
        if verb == "suspend":
            parser.add_argument("--seconds", type=float, help="absent: until resumed")
            parser.add_argument("--reason", default="suspended by an operator")
    suppression = with_config(sub.add_parser("suppression", help="suppression lists"))
    suppression.add_argument("action", choices=["search", "add", "remove", "import", "export"])
    suppression.add_argument("target", nargs="?", help="an address, or a CSV file")
    suppression.add_argument("--scope", default="*", help='"*" or a sender domain')
    suppression.add_argument("--reason", default="manual")
    consent = with_config(sub.add_parser("consent", help="consent records"))
    consent.add_argument(
        "action", choices=["search", "add", "confirm", "withdraw", "import", "export"]
    )
    consent.add_argument("target", nargs="?", help="a recipient, or a CSV file")
    consent.add_argument("--list", help="the list: a List-Id or the sender domain")
    consent.add_argument(
        "--method", default="single-opt-in", choices=["double-opt-in", "single-opt-in", "imported"]
    )
    consent.add_argument("--source", default="gateway consent", help="where consent was given")
    inject = with_config(sub.add_parser("inject", help="queue a message file over HTTP"))
    inject.add_argument("--from", dest="sender", default="")
    inject.add_argument("--to", dest="recipients", action="append", required=True)
    inject.add_argument("file", type=Path)


VERBS = {
    "queue", "remove", "holds", "explain", "suspend", "resume", "suppression", "consent", "inject"
}  # fmt: skip
MATCH = ("qid", "sender", "sender_domain", "tenant", "campaign", "stream", "domain")


def run(args: argparse.Namespace, config: Config) -> int:
    api = AdminClient(config)
    if args.command == "queue" and args.by:
        rows = api.call("GET", f"/admin/queues?by={args.by}")
        columns = (
            ["source", "connections", "waiting"]
            if args.by == "source"
            else [args.by, "messages", "recipients"]
        )
        print(table(rows, columns))
    elif args.command == "remove":
        match = {f: getattr(args, f) for f in MATCH if getattr(args, f)}
        if not match:
            raise SystemExit("gateway: say which: --tenant, --domain, --qid, ...")
        request = {"match": match, "action": args.action, "reason": args.reason}
        print(json.dumps(api.call("POST", "/admin/messages/remove", request)))
    elif args.command == "queue":
        answer = api.call("GET", "/admin/queues")
        columns = ["site", "provider", "ready", "oldest", "connections", "held_until", "why"]
        print(table(answer["sites"], columns))
        scheduled = answer["scheduled"]
        print(f"\nscheduled for a later attempt: {scheduled['jobs']} jobs")
    elif args.command == "holds":
        rows = [
            {**h, "scope": " ".join(f"{k}={v}" for k, v in h["scope"].items())}
            for h in api.call("GET", "/admin/holds")
        ]
        print(table(rows, ["scope", "until", "reason"]))
    elif args.command == "explain":
        print(json.dumps(api.call("GET", f"/admin/explain/{args.qid}"), indent=2))
    elif args.command in ("suspend", "resume"):
        scope = {f: getattr(args, f) for f in FIELDS if getattr(args, f)}
        if not scope:
            raise SystemExit("gateway: say what: --site, --provider, --source, ...")
        body: dict[str, Any] = {"scope": scope}
        if args.command == "suspend":
            body.update(seconds=args.seconds, reason=args.reason)
        print(json.dumps(api.call("POST", f"/admin/{args.command}", body)))
    elif args.command == "suppression":
        return _suppression(api, args)
    elif args.command == "consent":
        return _consent(api, args)
    elif args.command == "inject":
        query = urlencode([("sender", args.sender), *(("rcpt", r) for r in args.recipients)])
        with args.file.open("rb") as source:
            answer = api.upload(
                f"/admin/messages?{query}", source, args.file.stat().st_size, "message/rfc822"
            )
        print(json.dumps(answer))
    return 0


def _transfer(api: AdminClient, base: str, action: str, target: str | None) -> bool:
    """CSV import and export of a list (suppression, consent); False if the
    action is another."""
    if action == "export":
        if target:
            with open(target, "wb") as out:
                size = api.download(f"{base}/export", out)
            print(f"exported {size / 1e6:.1f} MB to {target}", file=sys.stderr)
        else:
            api.download(f"{base}/export", sys.stdout.buffer)
        return True
    if not target:
        raise SystemExit(f"gateway: {base[1:]} {action} needs an address or a file")
    if action == "import":
        with open(target, "rb") as source:
            answer = api.upload(f"{base}/import", source, os.path.getsize(target), "text/csv")
        print(f"imported {answer['imported']:,} entries")
        return True
    return False


def _suppression(api: AdminClient, args: argparse.Namespace) -> int:
    if _transfer(api, "/suppression", args.action, args.target):
        return 0
    if args.action == "search":
        found = api.call("GET", "/suppression?" + urlencode({"address": args.target}))
        print(table(found, ["address", "scope", "reason", "at", "source", "expires_at"]))
    elif args.action == "add":
        entry = {"address": args.target, "scope": args.scope, "reason": args.reason}
        print(json.dumps(api.call("POST", "/suppression", entry)))
    else:
        entry = {"address": args.target, "scope": args.scope}
        print(json.dumps(api.call("DELETE", "/suppression", entry)))
    return 0


def _consent(api: AdminClient, args: argparse.Namespace) -> int:
    if _transfer(api, "/consent", args.action, args.target):
        return 0
    if args.action == "search":
        query = {"recipient": args.target, **({"list": args.list} if args.list else {})}
        found = api.call("GET", "/consent?" + urlencode(query))
        columns = ["recipient", "list", "method", "confirmed_at", "source", "withdrawn_at"]
        print(table(found, columns))
        return 0
    if not args.list:
        raise SystemExit(f"gateway: consent {args.action} needs --list")
    record = {"recipient": args.target, "list": args.list, "source": args.source}
    if args.action == "add":
        print(json.dumps(api.call("POST", "/consent", {**record, "method": args.method})))
    elif args.action == "confirm":
        print(json.dumps(api.call("POST", "/consent/confirm", record)))
    else:
        print(json.dumps(api.call("DELETE", "/consent", record)))
    return 0
