"""`mailcow-ha peers sync` and `peers show`: learn the cluster's members from the Hetzner API.

cloud-init runs `peers sync` at first boot, before it starts keepalived and Galera: the node's
user data lists no peers, so this writes keepalived.conf and the Galera option file with every
member found by label. The agent repeats the sync every `membership.sync_interval` seconds and
rewrites the files (and reloads keepalived) only when the members changed.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mailcow_ha.adapters.hetzner import HetznerCloud
from mailcow_ha.agent.membership import MembershipSync, load_membership
from mailcow_ha.cli.argtypes import positive_seconds
from mailcow_ha.config import load_config
from mailcow_ha.deadline import Deadline
from mailcow_ha.errors import ExitCode

SYNC_TIMEOUT = 60.0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("peers", help="learn or show the cluster's members")
    actions = parser.add_subparsers(dest="peers_command", metavar="ACTION", required=True)
    sync = actions.add_parser(
        "sync",
        help="list the cluster's servers in the Hetzner API once and update keepalived.conf and the Galera config",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sync.add_argument(
        "--timeout",
        type=positive_seconds,
        default=SYNC_TIMEOUT,
        help=f"seconds the API listing may take, retries included (default: {SYNC_TIMEOUT:g})",
    )
    sync.add_argument(
        "--no-check",
        action="store_true",
        help="skip `keepalived -t` on the new keepalived.conf (for hosts without keepalived installed yet)",
    )
    sync.set_defaults(handler=run_sync)
    show = actions.add_parser("show", help="print the members this node knows, without calling the API")
    show.add_argument("--json", action="store_true", help="print them as JSON")
    show.set_defaults(handler=run_show)


def run_sync(args: argparse.Namespace) -> ExitCode:
    config = load_config(args.config)
    sync = MembershipSync(config, HetznerCloud(config.hetzner), check_config=not args.no_check)
    result = sync.sync(Deadline.after(f"peers sync ({args.timeout:g} s)", args.timeout))
    membership = result.membership
    names = ", ".join(f"{member.name} ({member.private_ip})" for member in membership.members)
    print(f"members: {names}")
    print(f"this server's id: {membership.server_id}")
    if result.updated:
        reloaded = "; keepalived reloaded" if result.reloaded else ""
        print(f"updated {config.paths.keepalived_conf} and {config.paths.galera_conf}: {result.reason}{reloaded}")
    else:
        print(f"no change: {result.reason}")
    return ExitCode.OK


def run_show(args: argparse.Namespace) -> ExitCode:
    config = load_config(args.config)
    membership = load_membership(config, move_corrupt=False)
    if args.json:
        print(json.dumps({**membership.to_json(), "problem": membership.problem}, indent=2, sort_keys=True))
        return ExitCode.OK
    if membership.problem is not None:
        print(f"warning: {membership.problem}", file=sys.stderr)
    print(f"members of {config.cluster} (from {membership.source}):")
    for member in membership.members:
        server = "" if member.server_id is None else f", server {member.server_id}"
        print(f"  {member.index}  {member.name}  {member.private_ip}{server}")
    return ExitCode.OK
