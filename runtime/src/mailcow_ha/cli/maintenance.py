"""`mailcow-ha maintenance on [--for DURATION] | off | status`: hold failovers while the cluster is worked on.

While the mode is on, the agent ignores container, mount and floating IP failures, so updating
mailcow on the master does not fail it over. A node outside Galera's primary component still
reports unhealthy. `on` and `off` apply to this node and, through the agents' status API, to
every other member, so it does not matter on which node they run. `--local` changes this node
only. The mode is stored in each node's state directory, so it survives agent restarts. It
expires by itself after `--for`, and each agent alerts once if it expired while still switched on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from mailcow_ha.agent.membership import load_membership
from mailcow_ha.agent.statusclient import StatusClient
from mailcow_ha.config import NodeConfig, load_config
from mailcow_ha.errors import ExitCode, MailcowHaError
from mailcow_ha.ops import maintenance

ACTION_TIMEOUT = 5.0
"""Seconds one member may take to switch its maintenance mode."""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "maintenance",
        help="hold automatic failovers across the cluster during maintenance (on, off, status)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="maintenance_command", metavar="ACTION", required=True)
    on = actions.add_parser("on", help="switch maintenance mode on for the whole cluster (or --local)")
    on.add_argument(
        "--for",
        dest="duration",
        type=_duration,
        default=None,
        metavar="DURATION",
        help=(
            "switch it off by itself after DURATION, e.g. 30m, 2h or 1h30m; a number alone is seconds "
            "(default: until `maintenance off`)"
        ),
    )
    on.add_argument("--reason", default="", help="a short note shown in status output and alerts")
    _add_local(on)
    on.set_defaults(handler=run_on)
    off = actions.add_parser(
        "off", help="switch maintenance mode off everywhere (or --local): failures fail over again"
    )
    _add_local(off)
    off.set_defaults(handler=run_off)
    status = actions.add_parser("status", help="show whether maintenance mode is on (exit 0 when on, 4 when off)")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(handler=run_status)


def _duration(text: str) -> float:
    try:
        return maintenance.parse_duration(text)
    except maintenance.MaintenanceInputError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_local(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--local", action="store_true", help="change this node only, not the other members")


def run_on(args: argparse.Namespace) -> ExitCode:
    config = load_config(args.config)
    if args.reason and (any(ord(character) < 32 for character in args.reason) or len(args.reason) > 200):
        raise maintenance.MaintenanceInputError("--reason must be one line of at most 200 characters")
    window = maintenance.switch_on(config.paths.state_dir, duration=args.duration, reason=args.reason)
    print(f"maintenance mode on {config.node.name}: {maintenance.describe(window, time.time())}")
    if window.expires_at is None:
        print("it stays on until `mailcow-ha maintenance off`; consider --for so it cannot be forgotten")
    if args.local:
        return ExitCode.OK
    return _on_other_members(config, {"on": True, "seconds": args.duration, "reason": args.reason})


def run_off(args: argparse.Namespace) -> ExitCode:
    config = load_config(args.config)
    removed = maintenance.switch_off(config.paths.state_dir)
    print(f"maintenance mode on {config.node.name}: {'off' if removed else 'was already off'}")
    if args.local:
        return ExitCode.OK
    return _on_other_members(config, {"on": False})


def _on_other_members(config: NodeConfig, params: dict[str, Any]) -> ExitCode:
    """Call the maintenance action on every other member; report each, and exit 4 if any failed."""
    client = StatusClient.from_config(config, timeout=ACTION_TIMEOUT)
    failed = []
    for member in load_membership(config).members:
        if member.name == config.node.name:
            continue
        try:
            result = client.call(
                member.private_ip, maintenance.ACTION, params, timeout=ACTION_TIMEOUT, node=member.name
            )
        except MailcowHaError as error:
            failed.append(member.name)
            print(f"maintenance mode on {member.name}: NOT changed: {error}", file=sys.stderr)
            continue
        outcome = result.get("maintenance", "changed")
        if outcome == "off" and result.get("changed") is False:
            outcome = "was already off"
        print(f"maintenance mode on {member.name}: {outcome}")
    if failed:
        print(
            f"maintenance mode was not changed on {', '.join(failed)}; run the same command there, "
            "or again here once they are reachable",
            file=sys.stderr,
        )
        return ExitCode.DEGRADED
    return ExitCode.OK


def run_status(args: argparse.Namespace) -> ExitCode:
    config = load_config(args.config)
    now = time.time()
    window, problem = maintenance.read_maintenance(config.paths.state_dir, move_corrupt=False)
    active = window is not None and window.active(now)
    if args.json:
        document = {
            "node": config.node.name,
            "active": active,
            "window": None if window is None else window.to_json(),
            "description": maintenance.describe(window, now),
            "problem": problem,
        }
        print(json.dumps(document, indent=2, sort_keys=True))
    else:
        print(f"maintenance mode on {config.node.name}: {maintenance.describe(window, now)}")
        if problem is not None:
            print(f"warning: {problem}", file=sys.stderr)
    return ExitCode.OK if active else ExitCode.DEGRADED
