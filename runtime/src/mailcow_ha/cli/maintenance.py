"""`mailcow-ha maintenance on [--for DURATION] | off | status`: hold failovers on this node while it is worked on.

While the mode is on, the agent ignores container, mount and floating IP failures, so updating
mailcow on the master does not fail it over. A node outside Galera's primary component still
reports unhealthy. The mode is stored in the state directory, so it survives agent restarts. It
expires by itself after `--for`, and the agent alerts once if it expired while still switched on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from mailcow_ha.config import load_config
from mailcow_ha.errors import ExitCode
from mailcow_ha.ops import maintenance


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "maintenance",
        help="hold failovers on this node during maintenance (on, off, status)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="maintenance_command", metavar="ACTION", required=True)
    on = actions.add_parser("on", help="switch maintenance mode on for this node")
    on.add_argument(
        "--for",
        dest="duration",
        type=_duration,
        default=None,
        metavar="DURATION",
        help="switch it off by itself after DURATION, e.g. 30m, 2h or 1h30m (default: until `maintenance off`)",
    )
    on.add_argument("--reason", default="", help="a short note shown in status output and alerts")
    on.set_defaults(handler=run_on)
    off = actions.add_parser("off", help="switch maintenance mode off: failures fail over again")
    off.set_defaults(handler=run_off)
    status = actions.add_parser("status", help="show whether maintenance mode is on (exit 0 when on, 4 when off)")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(handler=run_status)


def _duration(text: str) -> float:
    try:
        return maintenance.parse_duration(text)
    except maintenance.MaintenanceInputError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def run_on(args: argparse.Namespace) -> ExitCode:
    config = load_config(args.config)
    window = maintenance.switch_on(config.paths.state_dir, duration=args.duration, reason=args.reason)
    print(f"maintenance mode on {config.node.name}: {maintenance.describe(window, time.time())}")
    if window.expires_at is None:
        print("it stays on until `mailcow-ha maintenance off`; consider --for so it cannot be forgotten")
    return ExitCode.OK


def run_off(args: argparse.Namespace) -> ExitCode:
    config = load_config(args.config)
    removed = maintenance.switch_off(config.paths.state_dir)
    print(f"maintenance mode on {config.node.name}: {'off' if removed else 'was already off'}")
    return ExitCode.OK


def run_status(args: argparse.Namespace) -> ExitCode:
    config = load_config(args.config)
    now = time.time()
    window, problem = maintenance.read_maintenance(config.paths.state_dir)
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
