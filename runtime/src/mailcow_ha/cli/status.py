"""`mailcow-ha status`: the cluster as observed from this node, as a table, JSON or Prometheus metrics."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from mailcow_ha.agent.statusclient import StatusClient
from mailcow_ha.alert_ratelimit import read_alert_counters
from mailcow_ha.cli.argtypes import positive_seconds
from mailcow_ha.config import NodeConfig, load_config
from mailcow_ha.errors import ExitCode
from mailcow_ha.failover.history import FailoverRecord, HistoryStore
from mailcow_ha.ops.history import collect_history, last_move
from mailcow_ha.ops.metrics import build_metrics, render, write_textfile
from mailcow_ha.ops.status import CloudReader, ClusterStatus, gather, members_of
from mailcow_ha.ops.statuscheck import assess
from mailcow_ha.ops.statusview import render_table, status_to_json


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show every node, the floating IP and volume holders, and problems",
        description=(
            "Show every member's keepalived state, health, Galera state, containers and mount, who holds "
            "the floating IP(s) and the shared volume according to the Hetzner Cloud API, maintenance, "
            "breakers and the last failover. Exit 0 when healthy, 4 when degraded."
        ),
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the whole view as JSON")
    output.add_argument("--prometheus", action="store_true", help="print Prometheus metrics (text format)")
    output.add_argument(
        "--textfile",
        type=Path,
        metavar="PATH",
        help="write Prometheus metrics to PATH atomically for node_exporter's textfile collector and print "
        "nothing; the exit code is then 0 unless the file could not be written",
    )
    parser.add_argument(
        "--no-cloud",
        action="store_true",
        help="skip the Hetzner Cloud API reads (about 3 requests per run) and show keepalived's view only",
    )
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=2.0,
        metavar="SECONDS",
        help="timeout of each member's status request",
    )
    parser.set_defaults(handler=run)


def collect(config: NodeConfig, *, timeout: float, use_cloud: bool) -> tuple[ClusterStatus, list[FailoverRecord]]:
    """Gather the status with the last failover filled in, and every member's history records.

    Corrupt state files are reported as problems and left in place.
    """
    client = StatusClient.from_config(config, timeout=timeout)
    cloud = None
    if use_cloud:
        from mailcow_ha.adapters.hetzner import HetznerCloud  # noqa: PLC0415 (hcloud costs 0.15 s to import)

        cloud = CloudReader(config, HetznerCloud(config.hetzner))
    status = gather(config, client, cloud=cloud, move_corrupt=False)
    history = collect_history(
        client,
        members_of(config, move_corrupt=False),
        local_node=config.node.name,
        local_store=HistoryStore(config.paths.state_dir),
    )
    lost = tuple((name, history.unavailable[name]) for name in sorted(history.corrupt))
    status = dataclasses.replace(
        status, last_move=last_move(history.records), state_problems=status.state_problems + lost
    )
    return status, list(history.records)


def run(args: argparse.Namespace) -> ExitCode:
    config = load_config(args.config)
    status, records = collect(config, timeout=args.timeout, use_cloud=not args.no_cloud)
    assessment = assess(status)

    if args.prometheus or args.textfile:
        counters = read_alert_counters(config.paths.state_dir, move_corrupt=False)
        text = render(build_metrics(status, assessment, records=records, alert_counters=counters))
        if args.textfile:
            write_textfile(args.textfile, text)
            return ExitCode.OK
        sys.stdout.write(text)
    elif args.json:
        print(json.dumps(status_to_json(status, assessment), indent=2, sort_keys=True))
    else:
        print(render_table(status, assessment))
    return ExitCode.DEGRADED if assessment.degraded else ExitCode.OK
