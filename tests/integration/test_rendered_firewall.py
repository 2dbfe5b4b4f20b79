"""The rendered host firewall, loaded with nft into a namespace and checked with real packets.

A node namespace gets the rules from the example stack's review files. A client namespace on
the node's private link has one address inside the private subnet, one outside it and an IPv6
one. A container namespace sits behind the node on mailcow's bridge network, and a metadata
namespace has the metadata address. Listeners in the node record every packet that reaches a
socket, and the test compares them with what the rules should let through.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.netns import Namespace, Topology, netns_available
from mailcow_ha.cli.render import load_stack, render_stack
from mailcow_ha.render.firewall import GALERA_TCP_PORTS, GALERA_UDP_PORTS
from mailcow_ha.render.nodeconfig import STATUS_API_PORT

pytestmark = pytest.mark.integration

REPOSITORY = Path(__file__).resolve().parents[2]
NODE_IP = "10.0.1.11"
INSIDE_IP = "10.0.1.50"
OUTSIDE_NET_NODE = "192.0.2.11"
OUTSIDE_IP = "192.0.2.50"
NODE_IP6 = "fd00:1::11"
CLIENT_IP6 = "fd00:1::50"
METADATA_IP = "169.254.169.254"
OTHER_LINK_LOCAL_IP = "169.254.169.253"
PRIVATE_ONLY_TCP = (*GALERA_TCP_PORTS, STATUS_API_PORT)
OPEN_TCP = 25
VRRP = 112
PROBE_TIMEOUT = 1.0

LISTENER = """
import select, socket, sys
tcp_ports, udp_ports = ([int(p) for p in argument.split(",") if p] for argument in sys.argv[1:3])
sockets = {}
for port in tcp_ports:
    for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((address, port)); s.listen(16); sockets[s] = ("tcp", port)
for port in udp_ports:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port)); sockets[s] = ("udp", port)
for family, proto in ((socket.AF_INET, 112), (socket.AF_INET6, 112)):
    s = socket.socket(family, socket.SOCK_RAW, proto); sockets[s] = ("vrrp", 0)
print("ready", flush=True)
while True:
    for s in select.select(list(sockets), [], [])[0]:
        kind, port = sockets[s]
        if kind == "tcp":
            connection, peer = s.accept(); connection.close()
        else:
            _, peer = s.recvfrom(65535)
        print(kind, port, peer[0], flush=True)
"""

PROBER = """
import json, socket, sys, threading
results = {}
def probe(name, kind, source, target, port):
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    try:
        if kind == "tcp":
            s = socket.socket(family, socket.SOCK_STREAM); s.settimeout(float(sys.argv[2]))
            if source: s.bind((source, 0))
            s.connect((target, port)); results[name] = "connected"
        else:
            proto = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_RAW
            s = socket.socket(family, proto, 0 if kind == "udp" else 112)
            if source: s.bind((source, 0))
            s.sendto(b"probe", (target, port)); results[name] = "sent"
        s.close()
    except OSError as error:
        results[name] = type(error).__name__
threads = [threading.Thread(target=probe, args=item) for item in json.loads(sys.argv[1])]
for thread in threads: thread.start()
for thread in threads: thread.join()
print(json.dumps(results))
"""


@dataclasses.dataclass
class Lab:
    node: Namespace
    client: Namespace
    container: Namespace
    metadata: Namespace


def require(name: str) -> None:
    if shutil.which(name) is None:
        pytest.fail(f"{name} is missing; run scripts/install-system-packages")


@pytest.fixture(scope="module")
def firewall_rules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example stack's firewall rules, from the offline review of node 1."""
    out = tmp_path_factory.mktemp("render")
    render_stack(
        dataclasses.replace(load_stack(REPOSITORY, "prod"), runtime_ref="f" * 40), REPOSITORY / "cloud-init", out
    )
    return out / "mailcow-prod-1/files/etc/mailcow-ha/firewall.nft"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    reason = netns_available()
    if reason:
        pytest.skip(reason)
    require("nft")
    topology = Topology()
    try:
        node = topology.add_namespace("fwnode")
        client = topology.add_namespace("fwclient")
        container = topology.add_namespace("fwctr")
        metadata = topology.add_namespace("fwmeta")
        private = topology.add_bridge("fwpriv")
        private.attach(node, "eth0", [f"{NODE_IP}/24", f"{OUTSIDE_NET_NODE}/24"])
        private.attach(client, "eth0", [f"{INSIDE_IP}/24", f"{OUTSIDE_IP}/24"])
        for namespace, address in ((node, NODE_IP6), (client, CLIENT_IP6)):
            namespace.ip("addr", "add", f"{address}/64", "dev", "eth0", "nodad")
        topology.add_bridge("fwdock").attach(node, "mailcow0", "172.22.1.1/24")
        topology.bridges[-1].attach(container, "eth0", "172.22.1.2/24")
        container.ip("route", "add", "default", "via", "172.22.1.1")
        topology.add_bridge("fwmd").attach(node, "eth1", "169.254.0.1/16")
        topology.bridges[-1].attach(metadata, "eth0", [f"{METADATA_IP}/16", f"{OTHER_LINK_LOCAL_IP}/16"])
        metadata.ip("route", "add", "default", "via", "169.254.0.1")
        node.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        yield Lab(node, client, container, metadata)
    finally:
        topology.close()


def start_listener(namespace: Namespace, tcp_ports: list[int], udp_ports: list[int]) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        namespace.exec_argv(
            [sys.executable, "-c", LISTENER, ",".join(map(str, tcp_ports)), ",".join(map(str, udp_ports))]
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if line.strip() != "ready":
        process.kill()
        pytest.fail(f"listener in {namespace.name} did not start: {process.stderr.read() if process.stderr else ''}")
    return process


def stop_listener(process: subprocess.Popen[str], settle: float = 0.3) -> set[tuple[str, int, str]]:
    """Stop a listener after `settle` seconds and return (kind, port, source) of what it received."""
    time.sleep(settle)  # lets packets already on the veth reach the socket; nothing else is awaited
    process.terminate()
    output, _ = process.communicate(timeout=10)
    seen = set()
    for line in output.splitlines():
        kind, port, source = line.split()
        seen.add((kind, int(port), source))
    return seen


def probe(namespace: Namespace, probes: list[tuple[str, str, str, str, int]]) -> dict[str, str]:
    """Send each (name, kind, source, target, port) probe at once from `namespace`; return each outcome."""
    completed = namespace.run([sys.executable, "-c", PROBER, json.dumps(probes), str(PROBE_TIMEOUT)], timeout=30)
    results: dict[str, str] = json.loads(completed.stdout)
    return results


def load_rules(lab: Lab, rules: Path) -> None:
    for _ in range(2):  # the second load proves the file replaces its own table
        completed = lab.node.run(["nft", "-f", str(rules)], check=False)
        assert completed.returncode == 0, completed.stderr


def test_private_ports_only_from_subnet(lab: Lab, firewall_rules: Path) -> None:
    load_rules(lab, firewall_rules)
    listener = start_listener(lab.node, [OPEN_TCP, *PRIVATE_ONLY_TCP], list(GALERA_UDP_PORTS))
    try:
        probes = [(f"tcp{port}-inside", "tcp", INSIDE_IP, NODE_IP, port) for port in (OPEN_TCP, *PRIVATE_ONLY_TCP)]
        probes += [(f"tcp{port}-outside", "tcp", OUTSIDE_IP, OUTSIDE_NET_NODE, port) for port in PRIVATE_ONLY_TCP]
        probes += [(f"tcp{port}-ipv6", "tcp", CLIENT_IP6, NODE_IP6, port) for port in PRIVATE_ONLY_TCP]
        probes += [
            ("tcp25-outside", "tcp", OUTSIDE_IP, OUTSIDE_NET_NODE, OPEN_TCP),
            ("tcp25-ipv6", "tcp", CLIENT_IP6, NODE_IP6, OPEN_TCP),
            ("udp-inside", "udp", INSIDE_IP, NODE_IP, GALERA_UDP_PORTS[0]),
            ("udp-outside", "udp", OUTSIDE_IP, OUTSIDE_NET_NODE, GALERA_UDP_PORTS[0]),
            ("vrrp-inside", "vrrp", INSIDE_IP, NODE_IP, 0),
            ("vrrp-outside", "vrrp", OUTSIDE_IP, OUTSIDE_NET_NODE, 0),
            ("vrrp-ipv6", "vrrp", CLIENT_IP6, NODE_IP6, 0),
        ]
        outcomes = probe(lab.client, probes)
        local = probe(lab.node, [(f"local{port}", "tcp", "", NODE_IP, port) for port in PRIVATE_ONLY_TCP])
        from_container = probe(lab.container, [("container3306", "tcp", "", NODE_IP, 3306)])
    finally:
        seen = stop_listener(listener)

    for port in (OPEN_TCP, *PRIVATE_ONLY_TCP):
        assert outcomes[f"tcp{port}-inside"] == "connected", port
        assert ("tcp", port, INSIDE_IP) in seen, port
    for port in PRIVATE_ONLY_TCP:
        assert outcomes[f"tcp{port}-outside"] == "TimeoutError", port
        assert outcomes[f"tcp{port}-ipv6"] == "TimeoutError", port
        assert local[f"local{port}"] == "connected", port
    assert outcomes["tcp25-outside"] == "connected"
    assert outcomes["tcp25-ipv6"] == "connected"
    assert from_container["container3306"] == "TimeoutError"
    assert ("udp", GALERA_UDP_PORTS[0], INSIDE_IP) in seen
    assert ("udp", GALERA_UDP_PORTS[0], OUTSIDE_IP) not in seen
    assert ("vrrp", 0, INSIDE_IP) in seen
    assert ("vrrp", 0, OUTSIDE_IP) not in seen
    assert ("vrrp", 0, CLIENT_IP6) not in seen
    assert not any(source in (OUTSIDE_IP, CLIENT_IP6) and port != OPEN_TCP for _, port, source in seen)


def test_containers_cannot_reach_metadata(lab: Lab, firewall_rules: Path) -> None:
    """The node forwards container traffic to link-local addresses, except to the metadata address."""
    load_rules(lab, firewall_rules)
    listener = start_listener(lab.metadata, [80], [])
    try:
        outcomes = probe(
            lab.container,
            [("metadata", "tcp", "", METADATA_IP, 80), ("other", "tcp", "", OTHER_LINK_LOCAL_IP, 80)],
        )
        from_node = probe(lab.node, [("node-metadata", "tcp", "", METADATA_IP, 80)])
    finally:
        seen = stop_listener(listener)

    assert outcomes["other"] == "connected"
    assert outcomes["metadata"] == "TimeoutError"
    assert ("tcp", 80, "172.22.1.2") in seen
    assert {source for _, _, source in seen} == {"172.22.1.2", "169.254.0.1"}
    assert from_node["node-metadata"] == "connected"


def test_rules_removed_with_table(lab: Lab, firewall_rules: Path) -> None:
    """The unit's ExecStop deletes the table, and the ports open again (nothing else was touched)."""
    load_rules(lab, firewall_rules)
    lab.node.run(["nft", "delete", "table", "inet", "mailcow_ha"])
    listener = start_listener(lab.node, [3306], [])
    try:
        outcomes = probe(lab.client, [("outside", "tcp", OUTSIDE_IP, OUTSIDE_NET_NODE, 3306)])
    finally:
        stop_listener(listener)

    assert outcomes["outside"] == "connected"
    assert "mailcow_ha" not in lab.node.run(["nft", "list", "tables"]).stdout
