"""Network namespaces joined by bridges, for tests that run real daemons (keepalived) per node.

A `Topology` owns every namespace it creates: node namespaces, and one namespace per bridge
that holds only the bridge and its ports. Each node joins a bridge through a veth pair created
directly in the two namespaces (`ip link add ... netns`), so nothing appears in the host's own
namespace and no route leads out of the topology. Names carry a per-topology token, so
concurrent test runs on one machine never collide, and `close()` deletes only what this
topology created, even after a failed test.

    topology = Topology()
    private = topology.add_bridge("priv")
    node = topology.add_namespace("n1")
    private.attach(node, "eth0", "10.0.1.11/24")
    private.set_port(node, up=False)       # cut node 1's private link
    topology.close()
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

COMMAND_TIMEOUT = 15.0
_NAMESPACE_MAX = 32
"""Namespace names end up in paths such as /run/netns/NAME and keepalived's pid directory."""


class NetnsError(RuntimeError):
    """A namespace, link or address command failed; the message quotes the command and its error."""


def netns_available() -> str | None:
    """Return why network namespaces cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if not Path("/usr/sbin/ip").exists() and not Path("/sbin/ip").exists():
        return "iproute2 is missing; run scripts/install-system-packages"
    return None


def run(
    argv: Sequence[str], *, timeout: float = COMMAND_TIMEOUT, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; with `check`, raise NetnsError quoting it when it fails."""
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise NetnsError(f"command timed out after {timeout:g} s: {' '.join(argv)}") from None
    if check and result.returncode != 0:
        raise NetnsError(
            f"command failed with exit status {result.returncode}: {' '.join(argv)}: {result.stderr.strip()}"
        )
    return result


class Namespace:
    """One network namespace created by a Topology, with loopback up."""

    def __init__(self, name: str) -> None:
        if len(name) > _NAMESPACE_MAX:
            raise NetnsError(f"namespace name {name!r} is longer than {_NAMESPACE_MAX} characters")
        self.name = name

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `ip -n NAME ARGS...`."""
        return run(["ip", "-n", self.name, *args], check=check)

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """Return the argv that runs `argv` inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self, argv: Sequence[str], *, timeout: float = COMMAND_TIMEOUT, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run(self.exec_argv(argv), timeout=timeout, check=check)

    def addresses(self, interface: str) -> list[str]:
        """Return the IPv4 and IPv6 addresses of `interface` as ADDRESS/PREFIX strings."""
        output = self.ip("-o", "addr", "show", "dev", interface).stdout
        found = []
        for line in output.splitlines():
            fields = line.split()
            if len(fields) > 3 and fields[2] in ("inet", "inet6"):
                found.append(fields[3])
        return found

    def add_address(self, interface: str, address: str) -> None:
        self.ip("addr", "add", address, "dev", interface)

    def set_link(self, interface: str, *, up: bool) -> None:
        self.ip("link", "set", interface, "up" if up else "down")

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"


class Bridge:
    """A Linux bridge alone in its own namespace; nodes attach to it through veth pairs."""

    def __init__(self, topology: Topology, namespace: Namespace, name: str) -> None:
        self.topology = topology
        self.namespace = namespace
        self.name = name
        self._ports: dict[tuple[str, str], str] = {}

    def attach(self, node: Namespace, interface: str, address: str | Sequence[str]) -> str:
        """Connect `node` to the bridge as `interface` with `address` (ADDRESS/PREFIX), both ends up.

        Returns the name of the bridge-side port, which `set_port` switches.
        """
        port = f"p{len(self._ports) + 1}"
        self.namespace.ip("link", "add", port, "type", "veth", "peer", "name", interface, "netns", node.name)
        self.namespace.ip("link", "set", port, "master", "br0")
        self.namespace.set_link(port, up=True)
        for item in [address] if isinstance(address, str) else address:
            ipaddress.ip_interface(item)
            node.add_address(interface, item)
        node.set_link(interface, up=True)
        self._ports[(node.name, interface)] = port
        return port

    def port_of(self, node: Namespace, interface: str = "eth0") -> str:
        try:
            return self._ports[(node.name, interface)]
        except KeyError:
            raise NetnsError(f"{node.name}/{interface} is not attached to bridge {self.namespace.name}") from None

    def set_port(self, node: Namespace, *, up: bool, interface: str = "eth0") -> None:
        """Switch the bridge-side port of `node`'s link: down cuts the node off like a failed link."""
        self.namespace.set_link(self.port_of(node, interface), up=up)


class Topology:
    """Namespaces and bridges created together and removed together."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token or f"mh{os.getpid() % 100000}{random.randrange(100, 999)}"
        self.namespaces: list[Namespace] = []
        self.bridges: list[Bridge] = []

    def namespace_name(self, role: str) -> str:
        return f"{self.token}-{role}"

    def add_namespace(self, role: str) -> Namespace:
        """Create the namespace `<token>-<role>` with loopback up."""
        namespace = Namespace(self.namespace_name(role))
        run(["ip", "netns", "add", namespace.name])
        self.namespaces.append(namespace)
        namespace.set_link("lo", up=True)
        return namespace

    def add_bridge(self, role: str) -> Bridge:
        """Create a namespace `<token>-<role>` holding the bridge `br0`, up."""
        namespace = self.add_namespace(role)
        namespace.ip("link", "add", "br0", "type", "bridge")
        namespace.set_link("br0", up=True)
        bridge = Bridge(self, namespace, role)
        self.bridges.append(bridge)
        return bridge

    def __iter__(self) -> Iterator[Namespace]:
        return iter(self.namespaces)

    def close(self) -> None:
        """Delete every namespace this topology created (their interfaces go with them).

        Processes still running inside a namespace keep it alive in the kernel, so callers stop
        their daemons first.
        """
        for namespace in reversed(self.namespaces):
            result = run(["ip", "netns", "delete", namespace.name], check=False)
            if result.returncode != 0 and "No such file" not in result.stderr:
                log.error("could not delete namespace %s: %s", namespace.name, result.stderr.strip())
        self.namespaces.clear()
        self.bridges.clear()
