"""`mailcow-ha gc [--dry-run]`: clean residues and repair drift on this node (run by a timer every minute)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from mailcow_ha.adapters.alerts import AppriseAlerter
from mailcow_ha.agent.statusclient import StatusClient
from mailcow_ha.alert_events import NoAlerter
from mailcow_ha.config import load_config
from mailcow_ha.errors import ExitCode
from mailcow_ha.ops.gc_run import GarbageCollector, GcReport

ALERT_FLUSH_TIMEOUT = 10.0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "gc",
        help="remove residues (containers or mounts on a standby, stale files) and repair drift on the master",
        description=(
            "On a standby, stop mailcow containers and unmount the shared volume; on any node, close history "
            "records of dead transitions, remove stale temporary files and grow file systems whose volume was "
            "resized; on the master, route floating IPs and the shared volume back to it. Does nothing while a "
            "transition runs. Exit 0 when everything planned was done, 1 when an action failed."
        ),
    )
    parser.add_argument("--dry-run", action="store_true", help="print what would be done and change nothing")
    parser.add_argument("--json", action="store_true", help="print the plan and outcomes as JSON")
    parser.set_defaults(handler=run)


def report_to_json(report: GcReport) -> dict[str, Any]:
    return {
        "notes": list(report.plan.notes),
        "actions": [
            {
                "kind": str(outcome.action.kind),
                "subject": outcome.action.subject,
                "reason": outcome.action.reason,
                "result": outcome.result,
                "detail": outcome.detail,
            }
            for outcome in report.outcomes
        ],
    }


def render_report(report: GcReport, *, dry_run: bool) -> str:
    lines = [f"note: {note}" for note in report.plan.notes]
    for outcome in report.outcomes:
        verb = "would" if dry_run else outcome.result
        detail = f" -> {outcome.detail}" if outcome.detail else ""
        lines.append(f"{verb:<7} {outcome.action.kind} {outcome.action.subject}: {outcome.action.reason}{detail}")
    if not report.outcomes and not report.plan.notes:
        lines.append("nothing to do")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> ExitCode:
    config = load_config(args.config)
    client = StatusClient.from_config(config)
    if args.dry_run:
        # A dry run executes nothing, so it has nothing to alert about, and the Apprise sender
        # would read and rewrite the alert state file.
        report = GarbageCollector(config, alerter=NoAlerter(), client=client).run(dry_run=True)
    else:
        alerter = AppriseAlerter.from_config(config)
        try:
            report = GarbageCollector(config, alerter=alerter, client=client).run(dry_run=False)
        finally:
            alerter.close(ALERT_FLUSH_TIMEOUT)
    if args.json:
        print(json.dumps(report_to_json(report), indent=2, sort_keys=True))
    else:
        print(render_report(report, dry_run=args.dry_run))
    return ExitCode.FAILED if report.failed else ExitCode.OK
