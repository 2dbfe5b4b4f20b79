"""`mailcow-ha upgrade mailcow|runtime`: see mailcow_ha.mailcow.upgrade for the procedures."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from typing import Any

from mailcow_ha.agent.statusclient import StatusClient
from mailcow_ha.cli.argtypes import positive_seconds
from mailcow_ha.cli.backup import find_master
from mailcow_ha.config import NodeConfig, load_config
from mailcow_ha.errors import ExitCode, MailcowHaError, Refused
from mailcow_ha.mailcow import dbcheck, override_file, upgrade
from mailcow_ha.mailcow.backup import is_master_here
from mailcow_ha.mailcow.galera_ops import PeerUnreachable
from mailcow_ha.ops import maintenance
from mailcow_ha.ops.status import known_members

log = logging.getLogger(__name__)

MAINTENANCE_WINDOW = 2 * 3600.0


def register(subparsers: Any) -> None:
    group = subparsers.add_parser("upgrade", help="upgrade mailcow or the mailcow-ha runtime across the cluster")
    commands = group.add_subparsers(dest="upgrade_command", metavar="SUBCOMMAND", required=True)

    mailcow = commands.add_parser(
        "mailcow",
        help="update mailcow on the master, then bring every standby to the same version",
        description=(
            "Run on the master. Switch maintenance mode on, run mailcow's update.sh, render the compose override "
            "again, add missing primary keys, have every standby check out the same mailcow commit and pull its "
            "images, then switch maintenance mode off. A failed step leaves maintenance mode on."
        ),
    )
    mailcow.set_defaults(handler=run_mailcow)

    runtime = commands.add_parser(
        "runtime",
        help="install a pinned mailcow-ha commit on every node, standbys first, one at a time",
        description=(
            "Install the runtime at --ref on one node at a time, standbys by index and the master last, and wait "
            "after each until its restarted agent reports --version and a healthy verdict."
        ),
    )
    runtime.add_argument("--ref", required=True, help="the mailcow-ha commit id to install")
    runtime.add_argument("--version", required=True, help="the package version that commit carries, e.g. 0.2.0")
    runtime.add_argument(
        "--node-timeout", type=positive_seconds, default=600.0, help="seconds to wait per node (default: 600)"
    )
    runtime.set_defaults(handler=run_runtime)


class _PeerActions:
    """Calls upgrade actions on peers through the status API, and on this node directly."""

    def __init__(self, config: NodeConfig, client: StatusClient) -> None:
        self.config = config
        self.client = client
        self.addresses = {member.name: member.address for member in known_members(config)}

    def call(self, node: str, action: str, params: Mapping[str, Any], timeout: float) -> dict[str, Any]:
        if node == self.config.node.name and action == upgrade.ACTION_RUNTIME_INSTALL:
            return upgrade.install_runtime(self.config, str(params["ref"]))
        address = self.addresses.get(node)
        if address is None:
            raise PeerUnreachable(f"{node} is not a known cluster member; run `mailcow-ha peers sync`")
        return self.client.call(address, action, params, timeout=timeout, node=node)


def run_mailcow(args: argparse.Namespace) -> ExitCode:
    config = load_config(args.config)
    on_master, reason = is_master_here(config)
    if not on_master:
        master = find_master(config)
        where = f"run it on {master}" if master else "no node reports MASTER"
        raise Refused(f"mailcow is updated on the master and this node is not it ({reason}); {where}")
    project_dir = config.mailcow.project_dir
    schema = config.mailcow.db_name

    def update() -> str:
        upgrade.run_command(config.mailcow.update_command, cwd=project_dir)
        return upgrade.mailcow_commit(project_dir)

    def fix_database() -> list[str]:
        tables = dbcheck.tables_without_primary_key(config.galera.socket, schema)
        return [result.table for result in dbcheck.add_primary_keys(config.galera.socket, schema, tables)]

    steps = upgrade.MailcowUpgradeSteps(
        maintenance_on=lambda: _maintenance_on(config),
        update=update,
        render_override=lambda: _ignore(override_file.write_override(config, project_dir)),
        fix_database=fix_database,
        maintenance_off=lambda: _ignore(maintenance.switch_off(config.paths.state_dir)),
    )
    standbys = [member.name for member in known_members(config) if member.name != config.node.name]
    transport = _PeerActions(config, StatusClient.from_config(config, timeout=5.0))
    commit = upgrade.upgrade_mailcow(steps, standbys, transport)
    print(f"mailcow is at {commit} on {config.node.name} and {', '.join(standbys) or 'no standby'}")
    return ExitCode.OK


def run_runtime(args: argparse.Namespace) -> ExitCode:
    config = load_config(args.config)
    client = StatusClient.from_config(config, timeout=5.0)
    members = known_members(config)
    indexes = {member.name: member.index for member in members}
    addresses = {member.name: member.address for member in members}

    def read_state(node: str) -> upgrade.NodeState:
        try:
            snapshot = client.status(addresses[node], node=node).to_dict()
        except MailcowHaError as error:
            return upgrade.state_from_snapshot(node, indexes[node], None, str(error))
        return upgrade.state_from_snapshot(node, indexes[node], snapshot, None)

    nodes = [read_state(name) for name in addresses]
    done = upgrade.upgrade_runtime(
        nodes,
        args.ref,
        _PeerActions(config, client),
        read_state,
        expected_version=args.version,
        node_timeout=args.node_timeout,
    )
    print(f"mailcow-ha {args.version} ({args.ref}) runs on {', '.join(done)}")
    return ExitCode.OK


def _maintenance_on(config: NodeConfig) -> None:
    maintenance.switch_on(config.paths.state_dir, duration=MAINTENANCE_WINDOW, reason="mailcow upgrade")


def _ignore(_: object) -> None:
    return None
