"""`mailcow-ha switchover [--to NODE]`: move the service to a healthy node on purpose."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mailcow_ha.adapters.alerts import AppriseAlerter
from mailcow_ha.agent.statusclient import StatusClient
from mailcow_ha.alert_events import AlertEvent
from mailcow_ha.cli.argtypes import positive_seconds
from mailcow_ha.config import NodeConfig, load_config
from mailcow_ha.errors import ExitCode
from mailcow_ha.ops.status import fetch_snapshots, members_of
from mailcow_ha.ops.switchover import Coordinator, SwitchoverFailed, SwitchoverPlan, SwitchoverTimings, plan_switchover

ALERT_FLUSH_TIMEOUT = 10.0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "switchover",
        help="move the service to a healthy standby (planned; not counted by the circuit breaker)",
        description=(
            "Move the service from the current MASTER to a healthy standby that is a Synced member of "
            "Galera's primary component. The master stops its containers and unmounts the shared volume "
            "before the target takes over. Exit 0 on success, 5 when rejected (nothing changed), 1 when a "
            "step failed after the master began to step down."
        ),
    )
    parser.add_argument(
        "--to",
        metavar="NODE",
        help="the node to move to (default: the eligible standby with the highest keepalived priority)",
    )
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation (required without a terminal)")
    parser.add_argument("--json", action="store_true", help="print the plan and the result as JSON")
    parser.add_argument(
        "--allow-unreachable",
        action="store_true",
        help="proceed although a member's status API does not respond; only safe when that member's keepalived "
        "is stopped, because it cannot be kept out of the election",
    )
    parser.add_argument(
        "--timeout", type=positive_seconds, default=2.0, metavar="SECONDS", help="timeout of each status API request"
    )
    parser.set_defaults(handler=run)


def timings_for(config: NodeConfig) -> SwitchoverTimings:
    """Derive the coordinator's bounds from the node config's deadlines and advertisement interval."""
    deadlines = config.deadlines
    demote = deadlines.transition_lock + deadlines.containers_stop + deadlines.holders_term + deadlines.unmount
    election = max(5.0, 4 * config.keepalived.advert_int + 2.0)
    return SwitchoverTimings(
        hold=min(300.0, demote + election + 30.0),
        fault=max(5.0, 2 * config.keepalived.advert_int + 2.0),
        demote=demote,
        election=election,
        promote=deadlines.promote,
    )


def describe_plan(plan: SwitchoverPlan) -> str:
    held = ", ".join(member.name for member in plan.bystanders) or "none"
    return (
        f"switchover: {plan.master.name} (MASTER) -> {plan.target.name} ({plan.reason}); "
        f"kept out of the election meanwhile: {held}"
    )


def confirm(plan: SwitchoverPlan) -> bool:
    """Ask on the terminal; return False when the operator declines."""
    print(describe_plan(plan))
    print("mail is not served while the master demotes and the target promotes.")
    answer = input(f"move the service to {plan.target.name}? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def run(args: argparse.Namespace) -> ExitCode:
    config = load_config(args.config)
    client = StatusClient.from_config(config, timeout=args.timeout)
    statuses = fetch_snapshots(client, members_of(config))
    plan = plan_switchover(statuses, args.to, allow_unreachable=args.allow_unreachable)

    if not args.yes:
        if not sys.stdin.isatty():
            print(f"{describe_plan(plan)}\nadd --yes to run it without a terminal", file=sys.stderr)
            return ExitCode.USAGE
        if not confirm(plan):
            print("switchover cancelled; nothing changed")
            return ExitCode.OK
    elif not args.json:
        print(describe_plan(plan))

    coordinator = Coordinator(client, requested_by=config.node.name, timings=timings_for(config))
    try:
        result = coordinator.run(plan)
    except SwitchoverFailed as error:
        alerter = AppriseAlerter.from_config(config)
        alerter.send(AlertEvent.FAILOVER_FAILED, str(error), {"subject": f"switchover to {plan.target.name}"})
        alerter.close(ALERT_FLUSH_TIMEOUT)
        raise

    if args.json:
        print(json.dumps(result.to_json(), indent=2, sort_keys=True))
    else:
        for step, seconds in result.steps.items():
            print(f"  {step:<16} {seconds:6.2f} s")
        print(f"{plan.target.name} is MASTER; mail was not served for {result.interruption or 0.0:.1f} s")
    return ExitCode.OK
