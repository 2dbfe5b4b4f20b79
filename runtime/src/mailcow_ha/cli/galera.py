"""`mailcow-ha galera positions|bootstrap|first-boot`: Galera after a total outage and at first boot."""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from collections.abc import Collection, Iterator
from typing import Any

from mailcow_ha import __version__
from mailcow_ha.agent.snapshot import NodeSnapshot
from mailcow_ha.agent.statusapi import StatusApi
from mailcow_ha.agent.statusclient import StatusClient
from mailcow_ha.cli.argtypes import positive_seconds
from mailcow_ha.config import NodeConfig, load_config
from mailcow_ha.errors import ConfigError, ExitCode
from mailcow_ha.mailcow import dbsetup, galera_ops
from mailcow_ha.mailcow.bootstrap import BootstrapAction, FirstBootAction, positions_table
from mailcow_ha.ops.status import known_members

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    galera = subparsers.add_parser("galera", help="Galera positions, bootstrap after a total outage, first boot")
    commands = galera.add_subparsers(dest="galera_command", metavar="SUBCOMMAND", required=True)

    show = commands.add_parser(
        "positions",
        help="show every member's state and last committed seqno",
        description="Ask every member's agent for its Galera position (recovering it after a crash) and print them.",
    )
    show.set_defaults(handler=run_positions)

    bootstrap = commands.add_parser(
        "bootstrap",
        help="restart the cluster after a total outage from the most advanced member",
        description=(
            "Collect each member's position through the agents, bootstrap the member with the highest seqno and "
            "have the others join it. Rejects while any member is unreachable unless --force names the member "
            "to bootstrap; never bootstraps a member that is behind another."
        ),
    )
    bootstrap.add_argument(
        "--force",
        metavar="NODE",
        help="bootstrap NODE even though some members are unreachable or have no Galera data (replaced servers, "
        "which then join as new members); NODE must still be the most advanced",
    )
    bootstrap.add_argument("--dry-run", action="store_true", help="print the plan without starting anything")
    bootstrap.set_defaults(handler=run_bootstrap)

    first_boot = commands.add_parser(
        "first-boot",
        help="form the cluster at first boot: node 1 bootstraps a new cluster, the others join",
        description=(
            "Run by cloud-init after `mailcow-ha peers sync`. Node 1 of a brand-new cluster bootstraps once every "
            "peer reports that it is brand new; every other node waits for a primary component and joins it. "
            "Never bootstraps while a peer runs a primary component."
        ),
    )
    first_boot.add_argument(
        "--wait",
        type=positive_seconds,
        default=1800.0,
        help="seconds to keep asking the peers before giving up (default: 1800)",
    )
    first_boot.set_defaults(handler=run_first_boot)


def run_positions(args: argparse.Namespace) -> ExitCode:
    config = load_config(args.config)
    member = galera_ops.local_member(config)
    transport = _transport(config, member)
    reports = galera_ops.collect_reports(galera_ops.members_from_config(config), transport)
    print(positions_table(reports))
    return ExitCode.OK if all(report.position is not None for report in reports) else ExitCode.DEGRADED


def run_bootstrap(args: argparse.Namespace) -> ExitCode:
    config = load_config(args.config)
    member = galera_ops.local_member(config)
    transport = _transport(config, member)
    plan = galera_ops.run_bootstrap(
        galera_ops.members_from_config(config),
        transport,
        force=args.force,
        start_timeout=config.galera.start_timeout,
        dry_run=args.dry_run,
    )
    verb = "would" if args.dry_run else "did"
    if plan.action is BootstrapAction.BOOTSTRAP:
        print(f"{verb} bootstrap {plan.node}, then join {', '.join(plan.joiners) or 'no other member'}: {plan.reason}")
    else:
        print(f"{verb} join {', '.join(plan.joiners) or 'no member'} to the running cluster: {plan.reason}")
    return ExitCode.OK


def run_first_boot(args: argparse.Namespace) -> ExitCode:
    config = load_config(args.config)
    member = galera_ops.local_member(config)
    transport = _transport(config, member)
    peers = [peer for peer in galera_ops.members_from_config(config) if peer.node != config.node.name]
    with serve_galera_actions(config, member):
        decision = galera_ops.run_first_boot(member, config.node.index, peers, transport, wait_timeout=args.wait)
    if decision.action is FirstBootAction.BOOTSTRAP:
        dbsetup.ensure_database_users(config)
    print(f"galera first-boot: {decision.action}: {decision.reason}")
    return ExitCode.OK


def _transport(config: NodeConfig, member: galera_ops.LocalMember) -> galera_ops.StatusApiTransport:
    return galera_ops.StatusApiTransport(config, member, StatusClient.from_config(config, timeout=5.0))


@contextlib.contextmanager
def serve_galera_actions(
    config: NodeConfig, member: galera_ops.LocalMember, *, allowed_clients: Collection[str] | None = None
) -> Iterator[None]:
    """Serve this node's Galera actions while first boot waits, because the agent starts only afterwards.

    When the agent already listens on the status API port, it serves them and nothing is started.
    Calls are accepted from `allowed_clients`, by default the members' private addresses.
    """
    if allowed_clients is not None:
        clients = set(allowed_clients)
    else:
        clients = {member.address for member in known_members(config)}
    started = time.time()

    def snapshot() -> NodeSnapshot:
        return NodeSnapshot(
            cluster=config.cluster,
            node=config.node.name,
            node_index=config.node.index,
            private_ip=str(config.node.private_ip),
            agent_version=__version__,
            agent_started_at=started,
            taken_at=time.time(),
            reason="first boot: only the Galera actions are served until the agent starts",
        )

    try:
        api = StatusApi.from_config(config, snapshot, allowed_clients=lambda: clients)
    except ConfigError as error:
        log.info("not serving the Galera actions during first boot (%s); the running agent serves them", error)
        yield
        return
    galera_ops.register_galera_actions(api, member)
    api.start()
    try:
        yield
    finally:
        api.stop()
