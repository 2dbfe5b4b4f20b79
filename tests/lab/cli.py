"""`mailcow-ha-lab`: bring a lab cluster up, show it, inject faults, take it down.

    mailcow-ha-lab up [--nodes 3|5] [--action-latency S]   prints the lab id
    mailcow-ha-lab status [--lab ID] [--json]
    mailcow-ha-lab fault [--lab ID] KIND NODE                see `fault --help`
    mailcow-ha-lab down [--lab ID | --all]
    mailcow-ha-lab demo                                      what `make demo` runs

Without --lab, commands act on the lab most recently brought up (`current` in the lab root).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from lab import faults
from lab.cluster import Lab, LabOptions, lab_root
from lab.demo import run_demo
from lab.labnode import LabNode
from lab.shell import LabError

log = logging.getLogger(__name__)

CURRENT = "current"


def _lab_dir(lab_id: str | None) -> Path:
    root = lab_root()
    if lab_id:
        return root / lab_id
    current = root / CURRENT
    if not current.is_symlink():
        raise LabError(f"no current lab in {root}; pass --lab ID (see the directories in {root})")
    return root / current.readlink()


def _set_current(lab: Lab) -> None:
    current = lab_root() / CURRENT
    current.unlink(missing_ok=True)
    current.symlink_to(lab.lab_id)


def run_up(args: argparse.Namespace) -> int:
    lab = Lab.create(LabOptions(nodes=args.nodes, action_latency=args.action_latency))
    _set_current(lab)
    print(f"lab {lab.lab_id} in {lab.lab_dir}", flush=True)
    try:
        lab.up()
    except LabError as error:
        print(f"mailcow-ha-lab up failed: {error}\nthe lab is left for inspection; remove it with "
              f"`mailcow-ha-lab down --lab {lab.lab_id}`", file=sys.stderr)  # fmt: skip
        return 1
    phases = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in lab.timings.items())
    print(f"lab {lab.lab_id} is up; bring-up took {phases}")
    return 0


def run_down(args: argparse.Namespace) -> int:
    root = lab_root()
    if args.all:
        directories = [path for path in sorted(root.iterdir()) if path.is_dir() and not path.is_symlink()]
    else:
        directories = [_lab_dir(args.lab)]
    failed = False
    for directory in directories:
        problems = Lab.remove(directory)
        for problem in problems:
            print(f"{directory.name}: {problem}", file=sys.stderr)
        failed = failed or bool(problems)
        print(f"lab {directory.name} removed" + (" with problems" if problems else ""))
    current = root / CURRENT
    if current.is_symlink() and not current.exists():
        current.unlink()
    return 1 if failed else 0


def run_status(args: argparse.Namespace) -> int:
    lab = Lab.open(_lab_dir(args.lab))
    report = lab.status()
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(f"lab {lab.lab_id} ({len(lab.nodes)} nodes) in {lab.lab_dir}")
        for line in report["lines"]:
            print(line)
    return 0


def _target(lab: Lab, name: str) -> LabNode:
    if name == "master":
        node = lab.serving_node()
        if node is None:
            raise LabError("no node serves right now; name the node (index or name)")
        return node
    if name.isdigit():
        return lab.node(int(name))
    return lab.node_by_name(name)


def run_fault(args: argparse.Namespace) -> int:
    lab = Lab.open(_lab_dir(args.lab))
    if args.kind == "heal":
        faults.heal_partition(lab)
        for node in lab.nodes.values():
            lab.network.set_link(node.index, "private", True)
        print("private network healed")
        return 0
    if args.kind == "cloud-error":
        fault = lab.control.add_fault(operation=args.operation, status=args.status, count=args.count)
        print(f"cloud fault {fault['fault_id']}: {args.operation} answers HTTP {args.status} {args.count} time(s)")
        return 0
    if not args.nodes:
        raise LabError(f"fault {args.kind} needs a node (index, name or `master`)")
    targets = [_target(lab, name) for name in args.nodes]
    actions = {
        "container-crash": lambda node: faults.crash_container(node, args.service),
        "agent-crash": faults.crash_agent,
        "keepalived-kill": faults.kill_keepalived,
        "private-link-down": lambda node: faults.set_private_link(lab, node, up=False),
        "private-link-up": lambda node: faults.set_private_link(lab, node, up=True),
        "power-off": lambda node: faults.power_off(lab, node),
        "power-on": lambda node: faults.power_on(lab, node),
        "galera-kill": faults.kill_galera,
    }
    if args.kind == "partition":
        faults.partition(lab, targets)
    else:
        for node in targets:
            actions[args.kind](node)
    print(f"{args.kind}: {', '.join(node.name for node in targets)}")
    return 0


def run_demo_command(args: argparse.Namespace) -> int:
    return run_demo(LabOptions(nodes=3))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailcow-ha-lab", description="Run a mailcow-ha cluster in network namespaces."
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="bring a new lab cluster up")
    up.add_argument("--nodes", type=int, choices=[3, 5], default=3, help="number of nodes (default 3)")
    up.add_argument("--action-latency", type=float, default=0.0, help="seconds each cloud action runs (default 0)")
    up.set_defaults(handler=run_up)

    down = commands.add_parser("down", help="remove a lab and everything it created, even after a crash")
    target = down.add_mutually_exclusive_group()
    target.add_argument("--lab", help="the lab id (default: the current lab)")
    target.add_argument("--all", action="store_true", help="every lab under the lab root")
    down.set_defaults(handler=run_down)

    fault = commands.add_parser(
        "fault",
        help="inject a fault",
        description="Inject a fault into a running lab. NODE is a node index, a node name or `master`.",
    )
    fault.add_argument("--lab", help="the lab id (default: the current lab)")
    fault.add_argument("kind", choices=[*faults.FAULT_KINDS, "partition", "heal", "cloud-error"], help="the fault")
    fault.add_argument("nodes", nargs="*", metavar="NODE", help="the node(s); `partition` isolates them together")
    fault.add_argument("--service", default="postfix-mailcow", help="container-crash: the compose service")
    fault.add_argument("--operation", default="volume.attach", help="cloud-error: the API operation (e.g. volume.*)")
    fault.add_argument("--status", type=int, default=423, help="cloud-error: the HTTP status (default 423, locked)")
    fault.add_argument("--count", type=int, default=2, help="cloud-error: how many requests fail (default 2)")
    fault.set_defaults(handler=run_fault)

    demo = commands.add_parser("demo", help="bring a lab up, fail over twice with timelines, take it down")
    demo.set_defaults(handler=run_demo_command)

    status = commands.add_parser("status", help="show nodes, roles, mounts, containers and the floating IP route")
    status.add_argument("--lab", help="the lab id (default: the current lab)")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(handler=run_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args))
    except LabError as error:
        print(f"mailcow-ha-lab {args.command}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
