"""The `mailcow-ha` command line: one module per command group, each adding its subcommands.

Every handler takes the parsed arguments and returns an ExitCode. Errors of the
MailcowHaError family are printed as one message and mapped to their exit code; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from mailcow_ha import __version__
from mailcow_ha.errors import ExitCode, MailcowHaError
from mailcow_ha.logsetup import configure_logging

log = logging.getLogger(__name__)

# Modules under mailcow_ha.cli that define `register(subparsers)`. Each subcommand's parser
# sets `handler`, a callable taking the argparse.Namespace and returning an ExitCode.
COMMAND_MODULES = (
    "validate",
    "data",
    "failover",
    "render",
    "status",
    "history",
    "switchover",
    "gc",
    "galera",
    "db",
    "backup",
    "kuma",
    "agent",
    "maintenance",
    "peers",
    "upgrade",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the parser with every command group's subcommands."""
    parser = argparse.ArgumentParser(
        prog="mailcow-ha",
        description="Active/passive failover for mailcow-dockerized on Hetzner Cloud.",
    )
    parser.add_argument("--version", action="version", version=f"mailcow-ha {__version__}")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="node config file (default: $MAILCOW_HA_CONFIG or /etc/mailcow-ha/node.yaml)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="minimum level of log lines written to stderr (default: INFO)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"mailcow_ha.cli.{name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `mailcow-ha` command and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        code = args.handler(args)
    except MailcowHaError as error:
        log.error("%s", error)
        return int(error.exit_code)
    except KeyboardInterrupt:
        log.error("interrupted")
        return int(ExitCode.FAILED)
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
