"""Bring a lab back to a healthy cluster between scenarios, so one lab serves many of them.

Undoes what the faults do (links, partitions, cloud faults and latency, powered-off nodes,
killed keepalived or Galera members, maintenance mode), then waits for one serving master and
closes every breaker. A lab that cannot be restored is reported, and the caller builds a new one.
"""

from __future__ import annotations

import logging
import time

from lab import faults
from lab.cluster import Lab
from lab.labnode import LabNode
from lab.shell import LabError

log = logging.getLogger(__name__)


def restore(lab: Lab, timeout: float = 180.0) -> LabNode:
    """Return the lab to one serving master with every node healthy; return that master."""
    started = time.monotonic()
    lab.control.clear_faults()
    lab.control.set_latency({"default": lab.options.action_latency})
    faults.heal_partition(lab)
    for node in lab.nodes.values():
        if not node.machine.powered:
            faults.power_on(lab, node)
            continue
        lab.network.set_link(node.index, "public", True)
        lab.network.set_link(node.index, "private", True)
        if not node.machine.processes("keepalived"):
            node.start_keepalived()
    # Galera bootstrap and maintenance off both query every member's agent.
    lab.wait_for_status_api(list(lab.nodes.values()))
    restore_galera(lab, timeout)
    for node in lab.nodes.values():
        node.machine.run(lab.runtime_command(node, "maintenance", "off"), check=False, timeout=30.0)
    master = lab.wait_for_master(max(30.0, timeout - (time.monotonic() - started)))
    lab.reset_breakers()
    log.info("lab %s restored in %.1f s; %s serves", lab.lab_id, time.monotonic() - started, master.name)
    return master


def restore_galera(lab: Lab, timeout: float) -> None:
    """Start every stopped member; after losing the Primary component, bootstrap the most advanced."""
    members = list(lab.nodes.values())
    if not any(_synced(node) for node in members):
        for node in members:
            if node.database.running():
                node.database.kill()
        result = members[0].machine.run(
            lab.runtime_command(members[0], "galera", "bootstrap"), timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise LabError(f"galera bootstrap failed: {(result.stderr or result.stdout).strip()[-500:]}")
    for node in members:
        if not node.database.running():
            node.database.start()
    for node in members:
        node.database.wait_synced(timeout)


def _synced(node: LabNode) -> bool:
    status = node.database.try_status()
    return status is not None and status.synced_primary
