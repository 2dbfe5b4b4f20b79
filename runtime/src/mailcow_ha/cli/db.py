"""`mailcow-ha db check|fix`: tables without a primary key in mailcow's database."""

from __future__ import annotations

import argparse
from typing import Any

from mailcow_ha.config import load_config
from mailcow_ha.errors import ExitCode
from mailcow_ha.mailcow import dbcheck


def register(subparsers: Any) -> None:
    db = subparsers.add_parser("db", help="check and fix mailcow's tables for Galera")
    commands = db.add_subparsers(dest="db_command", metavar="SUBCOMMAND", required=True)
    for name, handler, summary in (
        ("check", run_check, "list mailcow's tables without a primary key; exit 4 when there are any"),
        ("fix", run_fix, "add an invisible primary key to every table without one"),
    ):
        command = commands.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")
        command.add_argument("--database", help="the database to check (default: mailcow.db_name)")
        if name == "fix":
            command.add_argument("--dry-run", action="store_true", help="print the statements without running them")
        command.set_defaults(handler=handler)


def run_check(args: argparse.Namespace) -> ExitCode:
    config = load_config(args.config)
    schema = args.database or config.mailcow.db_name
    tables = dbcheck.tables_without_primary_key(config.galera.socket, schema)
    if not tables:
        print(f"every table in {schema} has a primary key")
        return ExitCode.OK
    print(f"{len(tables)} table(s) in {schema} without a primary key; run `mailcow-ha db fix`:")
    for table in tables:
        print(f"  {table}")
    return ExitCode.DEGRADED


def run_fix(args: argparse.Namespace) -> ExitCode:
    config = load_config(args.config)
    schema = args.database or config.mailcow.db_name
    tables = dbcheck.tables_without_primary_key(config.galera.socket, schema)
    if not tables:
        print(f"every table in {schema} has a primary key; nothing to do")
        return ExitCode.OK
    if args.dry_run:
        for plan in dbcheck.plan_fixes(config.galera.socket, schema, tables):
            print(plan.statement + ";")
        return ExitCode.OK
    for result in dbcheck.add_primary_keys(config.galera.socket, schema, tables):
        print(result.describe(schema))
    return ExitCode.OK
