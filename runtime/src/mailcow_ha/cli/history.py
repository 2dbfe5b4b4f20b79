"""`mailcow-ha history`: past failovers, switchovers and demotes of every node, with step durations."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mailcow_ha.agent.statusclient import StatusClient
from mailcow_ha.cli.argtypes import non_negative_int, positive_seconds
from mailcow_ha.config import load_config
from mailcow_ha.errors import ExitCode
from mailcow_ha.failover.history import HistoryStore, RecordKind
from mailcow_ha.ops.history import ClusterHistory, collect_history, history_to_json, render_history
from mailcow_ha.ops.status import read_members


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "history",
        help="list past failovers and switchovers with reason, step durations and outcome",
        description=(
            "List the failover history of every member (read through their status APIs; this node's own "
            "file when its agent does not respond), oldest first."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print the records as JSON")
    parser.add_argument(
        "--limit",
        type=non_negative_int,
        default=20,
        metavar="N",
        help="show the newest N records (default 20, 0 for all)",
    )
    parser.add_argument(
        "--kind",
        choices=[str(kind) for kind in RecordKind],
        action="append",
        help="show only records of this kind (repeatable; default all)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=2.0,
        metavar="SECONDS",
        help="timeout of each member's history request",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> ExitCode:
    config = load_config(args.config)
    client = StatusClient.from_config(config, timeout=args.timeout)
    members, members_problem = read_members(config, move_corrupt=False)
    history = collect_history(
        client,
        members,
        local_node=config.node.name,
        local_store=HistoryStore(config.paths.state_dir),
    )
    if args.kind:
        kinds = set(args.kind)
        selected = tuple(r for r in history.records if r.kind in kinds)
        history = ClusterHistory(selected, history.unavailable, history.corrupt)
    if args.json:
        print(json.dumps(history_to_json(history, limit=args.limit), indent=2, sort_keys=True))
    else:
        print(render_history(history, limit=args.limit))
    if members_problem is not None:
        print(f"warning: {members_problem}; the node config's peers were asked instead", file=sys.stderr)
    return ExitCode.DEGRADED if history.unavailable or members_problem else ExitCode.OK
