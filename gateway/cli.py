"""Command line: `gateway run`, `check-config`, `dkim-records`, `check-domain`,
and the admin verbs (gateway/admin_cli.py) that talk to a running gateway."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from gateway import admin_cli
from gateway.auth import UsersFileError, hash_password, read_users
from gateway.config import Config, ConfigError, load_config
from gateway.delivery.egress import SourcePicker
from gateway.dkim import KeyLoadError, KeyStore
from gateway.domain_check import check_domain
from gateway.log import setup_logging
from gateway.plugin_host import PluginHost
from gateway.shaping import load_shaping
from gateway.tls import ServerTls, TlsError


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["ingress-worker"]:  # started by the queue manager (workers.py)
        return _ingress_worker(int(args_in[1]))
    parser = argparse.ArgumentParser(prog="gateway", description="Deliverability Gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the gateway (embedded defaults without --config)")
    run.add_argument("--config", type=Path, help="TOML configuration file")
    check = sub.add_parser("check-config", help="validate a configuration file and its DKIM keys")
    check.add_argument("file", type=Path)
    records = sub.add_parser("dkim-records", help="print the DNS TXT record of every DKIM key")
    records.add_argument("--config", type=Path, required=True)
    domain = sub.add_parser(
        "check-domain", help="check a sending domain's MX, SPF, DKIM, DMARC and egress rDNS"
    )
    domain.add_argument("domain")
    domain.add_argument("--config", type=Path, help="TOML configuration file")
    passwd = sub.add_parser("passwd", help="print a users-file line for SMTP AUTH")
    passwd.add_argument("user")
    passwd.add_argument("--tenant", default="", help="the tenant the user's mail counts for")
    passwd.add_argument("--stream", default="", help="the stream (marketing, transactional ...)")
    admin_cli.add_parsers(sub)
    args = parser.parse_args(argv)
    if args.command == "passwd":
        return _passwd(args)

    path = args.file if args.command == "check-config" else args.config
    try:
        config = load_config(path)
        keys = KeyStore(config.dkim)
        load_shaping(config.delivery.shaping_files)
        plugins = PluginHost(config)
        ServerTls(config.smtp.tls)
        if config.smtp.auth.users_file:
            read_users(config.smtp.auth.users_file)
    except (ConfigError, KeyLoadError, TlsError, UsersFileError) as exc:
        print(f"gateway: configuration error in {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    unbindable = SourcePicker(config.egress, config.helo_name).unbindable()
    if unbindable:
        print(f"gateway: configuration error in {path}:", *unbindable, sep="\n", file=sys.stderr)
        return 2
    if args.command == "check-config":
        count = len(keys.signers)
        print(
            f"{path}: OK ({count} DKIM key{'' if count == 1 else 's'}; "
            f"plugins: {', '.join(plugins.names) or 'none'})"
        )
        return 0
    if args.command in admin_cli.VERBS:
        return admin_cli.run(args, config)
    if args.command == "check-domain":
        findings = check_domain(config, args.domain)
        for finding in findings:
            print(finding)
        return 1 if any(f.level == "fail" for f in findings) else 0
    if args.command == "dkim-records":
        for signer in keys.signers:
            record = signer.dns_record()
            # A TXT string holds at most 255 octets; zone files join adjacent strings.
            chunks = " ".join(f'"{record[i : i + 250]}"' for i in range(0, len(record), 250))
            name = f"{signer.selector}._domainkey.{signer.domain}."
            print(f"{name} IN TXT ( {chunks} ) ; {signer.algorithm}, {signer.bits} bits")
        return 0
    return _run(config)


def _passwd(args: argparse.Namespace) -> int:
    """A line for [smtp.auth] users_file; the password from a prompt, or the
    first line of standard input when it is not a terminal."""
    if any(":" in v or "\n" in v for v in (args.user, args.tenant, args.stream)):
        print("gateway: user, tenant and stream cannot contain ':'", file=sys.stderr)
        return 2
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.user}: ")
        if getpass.getpass("again: ") != password:
            print("gateway: the passwords differ", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 12:
        print("gateway: use a password of at least 12 characters", file=sys.stderr)
        return 2
    fields = [args.user, hash_password(password), args.tenant, args.stream]
    print(":".join(fields).rstrip(":"))
    return 0


def _ingress_worker(index: int) -> int:
    from gateway.ingress_worker import run_worker
    from gateway.workers import CONFIG_ENV

    config = Config.model_validate_json(os.environ[CONFIG_ENV])
    setup_logging(config.log.level, config.log.format, process=f"ingress-{index}")
    run_worker(config, index)
    return 0


def _run(config: Config) -> int:
    setup_logging(config.log.level, config.log.format)
    from gateway.app import run as run_gateway

    try:
        run_gateway(config)
    except ConfigError as exc:  # a plugin that cannot start
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
