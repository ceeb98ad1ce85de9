"""Command line: `gateway run`, `gateway check-config`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.config import ConfigError, load_config
from gateway.log import setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description="Deliverability Gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the gateway (embedded defaults without --config)")
    run.add_argument("--config", type=Path, help="TOML configuration file")
    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file", type=Path)
    args = parser.parse_args(argv)

    path = args.config if args.command == "run" else args.file
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"gateway: configuration error in {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(f"{path}: OK")
        return 0
    setup_logging(config.log.level, config.log.format)
    from gateway.app import run as run_gateway

    run_gateway(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
