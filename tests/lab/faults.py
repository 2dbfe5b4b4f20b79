"""Faults the scenarios and `mailcow-ha-lab fault` inject, each as what it would be on real servers.

| fault | done in the lab by |
|---|---|
| container crash | SIGKILL of the container's main process (the child of its conmon) |
| agent crash | SIGKILL of the agent; its restart loop brings it back 2 s later, as systemd would |
| keepalived SIGKILL | SIGKILL of every keepalived process of the node (they keep their addresses) |
| private link down | the node's port on the private bridge goes down, like a pulled cable |
| partition | the isolated nodes' private ports move to a bridge of their own |
| power off | SIGKILL of the node's init (every process, every mount) and both ports down |
| Galera crash | SIGKILL of mariadbd |
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from lab.cluster import Lab
from lab.labnode import LabNode
from lab.observe import AGENT_COMM, scan_processes
from lab.shell import LabError
from lab.volumes import node_devices, replug, unplug_loop_device

log = logging.getLogger(__name__)

_Value = TypeVar("_Value")

FAULT_KINDS = (
    "container-crash",
    "agent-crash",
    "keepalived-kill",
    "private-link-down",
    "private-link-up",
    "power-off",
    "power-on",
    "galera-kill",
)


def container_main_pid(node: LabNode, container: str) -> int:
    """Return the host pid of a running container's main process (the child of its conmon)."""
    namespace = node.machine.pid_namespace
    if namespace is None:
        raise LabError(f"{node.name} is powered off")
    table = scan_processes([namespace])
    for process in table.by_namespace[namespace]:
        if process.comm != "conmon":
            continue
        argv = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
        children = table.live_children.get(process.pid, [])
        if b"-n" in argv and argv[argv.index(b"-n") + 1].decode() == container and children:
            return children[0]
    raise LabError(f"container {container} does not run on {node.name}")


def crash_container(node: LabNode, service: str = "postfix-mailcow") -> str:
    """Kill a mailcow container's main process with SIGKILL; return the container's name."""
    name = f"{node.engine.project}-{service}-1"
    os.kill(container_main_pid(node, name), signal.SIGKILL)
    log.info("fault: killed container %s on %s", name, node.name)
    return name


def crash_agent(node: LabNode) -> list[int]:
    """Kill the node's agent with SIGKILL; its restart loop starts a new one after 2 s."""
    killed = node.machine.signal_processes(AGENT_COMM, signal.SIGKILL)
    if not killed:
        raise LabError(f"no agent runs on {node.name}")
    log.info("fault: killed the agent on %s (pids %s)", node.name, killed)
    return killed


def kill_keepalived(node: LabNode, signum: int = signal.SIGKILL) -> list[int]:
    """Kill every keepalived process of the node (parent and VRRP child)."""
    killed = node.kill_keepalived(signum)
    if not killed:
        raise LabError(f"keepalived does not run on {node.name}")
    log.info("fault: sent signal %d to keepalived on %s (pids %s)", signum, node.name, killed)
    return killed


def set_private_link(lab: Lab, node: LabNode, up: bool) -> None:
    lab.network.set_link(node.index, "private", up)
    log.info("fault: private link of %s %s", node.name, "up" if up else "down")


def partition(lab: Lab, isolated: Iterable[LabNode]) -> None:
    """Cut the private network in two: the `isolated` nodes on one side, the rest on the other."""
    lab.network.partition(node.index for node in isolated)


def heal_partition(lab: Lab) -> None:
    lab.network.heal(lab.nodes)


def power_off(lab: Lab, node: LabNode) -> None:
    """Cut the node's power: its disks stop taking writes, every process ends, it leaves both networks.

    The disks go first: ending the node's mount namespace unmounts its file systems cleanly,
    which a power cut never does (ext4 multi-mount protection, the journal and MariaDB's files
    must look as a crash leaves them).
    """
    lab.network.set_link(node.index, "public", False)
    lab.network.set_link(node.index, "private", False)
    for device in node_devices(node.paths.device_dir).values():
        unplug_loop_device(device)
    node.machine.power_off()
    log.info("fault: %s powered off", node.name)


def power_on(lab: Lab, node: LabNode, timeout: float = 120.0, *, start_galera: bool = True) -> None:
    """Boot a powered-off node again: links up, boot, Galera joins, agent and keepalived start.

    Without `start_galera` the member stays down, as after a total outage, when an operator
    runs `mailcow-ha galera bootstrap` to restart the cluster from its most advanced member.
    """
    lab.network.set_link(node.index, "public", True)
    lab.network.set_link(node.index, "private", True)
    replug(node.paths.device_dir, lab.lab_dir / "volumes", lab.manifest)
    layout = lab.require_layout()
    node.boot(lab.image_tar(), layout.floating_ips, lab.network.add_floating_ip_address, lab.cancel)
    if start_galera:
        node.database.start()
        node.database.wait_synced(timeout)
    lab.start_runtime([node])
    log.info("fault: %s powered on again", node.name)


def kill_galera(node: LabNode) -> None:
    node.database.kill()


def wait_for(predicate: Callable[[], _Value | None], timeout: float, what: str, interval: float = 0.1) -> _Value:
    """Poll `predicate()` until it returns a true value; raise LabError naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
