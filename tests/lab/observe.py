"""Read the lab's state from outside the nodes, cheaply enough to do it every 100 ms.

One pass over the host's /proc finds each node's processes (by PID namespace), its running
containers (a `conmon` with a live child is a running container) and its keepalived and agent;
each node's mountinfo shows whether the shared volume is mounted there, recognised by the loop
device's backing image, so a mount anywhere counts, not only at the configured mount point;
the loop device's size shows whether the cloud has detached (unplugged) it under that mount;
the router's routing table shows where the floating IPs go.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lab.shell import ip

AGENT_COMM = "mailcow-ha-agen"


@dataclass(frozen=True)
class NodeView:
    """What one node looks like at one moment."""

    name: str
    index: int
    powered: bool
    shared_mounts: tuple[str, ...] = ()
    """Mount points inside the node whose device is a loop device on the shared volume's image."""
    containers: tuple[str, ...] = ()
    """Names of the node's running containers."""
    keepalived: bool = False
    agent: bool = False
    health: str | None = None
    """Content of the node's keepalived track file (`0` healthy), None when unreadable."""
    fenced_mounts: tuple[str, ...] = ()
    """Those of `shared_mounts` whose loop device the cloud has unplugged: every write there fails."""


@dataclass(frozen=True)
class LabView:
    """The whole lab at one moment."""

    time: float
    monotonic: float
    nodes: tuple[NodeView, ...]
    floating_ip_routes: Mapping[str, str | None] = field(default_factory=dict)
    """Floating IP -> the public address the router sends it to (None: dropped)."""

    def node(self, name: str) -> NodeView:
        return next(view for view in self.nodes if view.name == name)

    @property
    def mounted_on(self) -> list[str]:
        return [view.name for view in self.nodes if view.shared_mounts]

    @property
    def serving(self) -> list[str]:
        """Nodes with at least one running mailcow container."""
        return [view.name for view in self.nodes if view.containers]

    @property
    def writable_on(self) -> list[str]:
        """Nodes that can write the shared volume: mounted there through a device still attached."""
        return [view.name for view in self.nodes if set(view.shared_mounts) - set(view.fenced_mounts)]

    @property
    def serving_unfenced(self) -> list[str]:
        """Serving nodes, except those whose only shared mounts are on a detached device.

        Such a node's containers still run until its demote, but they can write no mail data.
        """
        return [
            view.name
            for view in self.nodes
            if view.containers and not (view.shared_mounts and set(view.shared_mounts) <= set(view.fenced_mounts))
        ]


@dataclass(frozen=True)
class _Process:
    pid: int
    ppid: int
    comm: str
    state: str
    namespace: str


@dataclass(frozen=True)
class ProcessTable:
    """One pass over /proc: each wanted PID namespace's processes, and every live process's parent."""

    by_namespace: dict[str, list[_Process]]
    live_children: dict[int, list[int]]
    """Parent pid -> pids of its live children, in any namespace (a container's init is in its own)."""


def scan_processes(namespaces: Iterable[str]) -> ProcessTable:
    """Read every process once and sort the wanted PID namespaces' processes out (by `pid:[inode]`)."""
    wanted = set(namespaces)
    found: dict[str, list[_Process]] = {namespace: [] for namespace in wanted}
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="utf-8", errors="replace") as stream:
                text = stream.read()
            namespace = os.readlink(f"/proc/{entry.name}/ns/pid")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        process = _Process(int(entry.name), int(fields[1]), comm, fields[0], namespace)
        # conmon starts `podman container cleanup` as its child once the container has exited;
        # that child does not make the container a running one.
        if process.state != "Z" and comm != "podman":
            children.setdefault(process.ppid, []).append(process.pid)
        if namespace in wanted:
            found[namespace].append(process)
    return ProcessTable(found, children)


def running_containers(processes: list[_Process], live_children: dict[int, list[int]]) -> list[str]:
    """Return the container names of the `conmon` processes that still have a live child."""
    names = []
    for process in processes:
        if process.comm != "conmon" or not live_children.get(process.pid):
            continue
        try:
            argv = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError):
            continue
        for flag in (b"-n", b"--name"):
            if flag in argv:
                names.append(argv[argv.index(flag) + 1].decode())
                break
    return sorted(names)


def loop_backing_file(device: str, cache: dict[str, str | None]) -> str | None:
    """Return the backing image of loop device `device`, or None for any other device."""
    if device in cache:
        return cache[device]
    backing = None
    if device.startswith("/dev/loop"):
        try:
            backing = Path(f"/sys/block/{Path(device).name}/loop/backing_file").read_text().strip()
        except FileNotFoundError:
            backing = None
    if backing is not None:
        backing = backing.removesuffix(" (deleted)")
    cache[device] = backing
    return backing


def mounts_of_image(mountinfo: str, image: str, cache: dict[str, str | None]) -> list[str]:
    """Return the mount points in `mountinfo` whose source is a loop device on `image`."""
    return [point for point, _ in mounted_devices_of_image(mountinfo, image, cache)]


def mounted_devices_of_image(mountinfo: str, image: str, cache: dict[str, str | None]) -> list[tuple[str, str]]:
    """Return (mount point, loop device) for every mount in `mountinfo` of a loop device on `image`."""
    found = []
    for line in mountinfo.splitlines():
        before, _, after = line.partition(" - ")
        fields, source = before.split(), after.split()
        if len(fields) < 5 or len(source) < 2:
            continue
        if loop_backing_file(source[1], cache) == image:
            found.append((fields[4], source[1]))
    return found


def loop_unplugged(device: str) -> bool:
    """Return whether loop device `device` was unplugged: cut to its first sector (lab.volumes)."""
    try:
        sectors = int(Path(f"/sys/block/{Path(device).name}/size").read_text())
    except (OSError, ValueError):
        return False
    return sectors <= 1


def floating_ip_routes(router_ns: str, addresses: Iterable[str]) -> dict[str, str | None]:
    """Return where the router sends each floating IP (the `via` address, or None)."""
    wanted = set(addresses)
    routes: dict[str, str | None] = dict.fromkeys(wanted)
    for line in ip("route", "show", netns=router_ns).stdout.splitlines():
        words = line.split()
        if not words:
            continue
        destination = words[0].removesuffix("/32")
        if words[0] in ("unreachable", "blackhole", "prohibit") and len(words) > 1:
            destination = words[1].removesuffix("/32")
            if destination in wanted:
                routes[destination] = None
            continue
        if destination in wanted and "via" in words:
            routes[destination] = words[words.index("via") + 1]
    return routes


def now() -> tuple[float, float]:
    return time.time(), time.monotonic()
