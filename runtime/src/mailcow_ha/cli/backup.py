"""`mailcow-ha backup --to DIR` and `mailcow-ha restore --from DIR`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from mailcow_ha.agent.statusclient import StatusClient
from mailcow_ha.config import NodeConfig, load_config
from mailcow_ha.errors import ExitCode, MailcowHaError
from mailcow_ha.mailcow import backup
from mailcow_ha.ops.status import members_of

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    create = subparsers.add_parser(
        "backup",
        help="back up mailcow's database (any node) and mail data (master only)",
        description=(
            "Dump mailcow's database from the local Galera member without locking tables, and on the master "
            "archive the mail data of the shared volume, into a new directory under DIR with a SHA-256 manifest."
        ),
    )
    create.add_argument("--to", type=Path, required=True, metavar="DIR", help="directory to create the backup in")
    parts = create.add_mutually_exclusive_group()
    parts.add_argument("--database-only", action="store_true", help="skip the mail data (works on any node)")
    parts.add_argument("--mail-only", action="store_true", help="skip the database dump")
    create.set_defaults(handler=run_backup)

    restore = subparsers.add_parser(
        "restore",
        help="restore mailcow's database and/or mail data from a backup directory",
        description=(
            "Check the backup's SHA-256 sums, load the database dump into the local Galera member (Galera "
            "replicates it) and/or extract the mail data onto the empty shared volume on the master. "
            "Stop mailcow first."
        ),
    )
    restore.add_argument("--from", dest="source", type=Path, required=True, metavar="DIR", help="a backup directory")
    restore.add_argument("--database", action="store_true", help="restore the database")
    restore.add_argument("--mail", action="store_true", help="restore the mail data")
    restore.set_defaults(handler=run_restore)


def run_backup(args: argparse.Namespace) -> ExitCode:
    config = load_config(args.config)
    result = backup.run_backup(
        config,
        args.to,
        database=not args.mail_only,
        mail=not args.database_only,
        find_master=lambda: find_master(config),
    )
    print(f"backup written to {result.directory}")
    for name, digest in sorted(result.files.items()):
        print(f"  {name}  sha256 {digest}")
    return ExitCode.OK


def run_restore(args: argparse.Namespace) -> ExitCode:
    config = load_config(args.config)
    if not (args.database or args.mail):
        print("nothing to restore: pass --database, --mail or both")
        return ExitCode.USAGE
    if args.database:
        backup.restore_database(config, args.source)
        print(f"database {config.mailcow.db_name} restored from {args.source}")
    if args.mail:
        backup.restore_mail_data(config, args.source)
        print(f"mail data restored onto {config.paths.mount_point}")
    return ExitCode.OK


def find_master(config: NodeConfig) -> str | None:
    """Return the node whose agent reports the keepalived state MASTER, or None when no peer does."""
    client = StatusClient.from_config(config, timeout=3.0)
    for member in members_of(config):
        if member.name == config.node.name:
            continue
        try:
            snapshot = client.status(member.address, node=member.name)
        except MailcowHaError as error:
            log.warning("could not ask %s for its state: %s", member.name, error)
            continue
        if snapshot.vrrp_state == "MASTER":
            return member.name
    return None
