"""Render keepalived.conf for one node: unicast VRRP, every node BACKUP with nopreempt.

keepalived elects the master, and the agent decides health and moves the floating IP through
the Hetzner API. The floating IP is configured on every node's public interface and the API
routes it to the master, so keepalived manages no real address. The file never contains
`state MASTER`, because that silently disables `nopreempt` and lets a restarted node take the
service back.

The agent reports health through `track_file` (0 healthy, non-zero puts the instance into
FAULT because the weight is 0) and keepalived watches the agent itself with `track_process`,
so a dead agent also means FAULT. Transitions reach the agent, in order, through `notify_fifo`.

keepalived 2.2.7 reports an instance without any virtual address as a configuration error
(`keepalived -t` exits 5; with VRRPv3 the instance is dropped), so the instance carries one
marker address on the loopback interface, host scope. It never leaves the node, and whether a
node holds it shows whether keepalived made it master.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mailcow_ha.errors import ConfigError

DEFAULT_MARKER_ADDRESS = "192.0.2.1"
"""An address from TEST-NET-1, reserved for documentation by RFC 5737, so no real network uses it."""
HEALTH_TRACK_NAME = "mailcow_ha_health"
AGENT_TRACK_NAME = "mailcow_ha_agent"
DEFAULT_AGENT_PROCESS = "mailcow-ha-agen"
"""The kernel's 15-character `comm` of the `mailcow-ha-agent` console script."""

MAX_NODES = 9
TOP_PRIORITY = 250
PRIORITY_STEP = 10

_PROCESS_COMM_MAX = 15
_INTERFACE_MAX = 15
_WORD = re.compile(r"^[A-Za-z0-9_.:-]+$")

Block = list["Line"]
Line = tuple[str, "str | Block | None"]
"""One keyword with a value, a nested block, or (None) nothing after it."""


def priority_for_index(index: int) -> int:
    """Return the VRRP priority of node `index`: 250 for node 1, then 10 less per node.

    Priorities are distinct and within keepalived's 1..254 (255 means address owner, which
    would pin the service to one node), so node 1 wins the first election of a new cluster.
    """
    if not 1 <= index <= MAX_NODES:
        raise ConfigError(f"node index {index} is out of range; expected 1..{MAX_NODES}")
    return TOP_PRIORITY - (index - 1) * PRIORITY_STEP


def vrrp_version_for(advert_int: float) -> int:
    """Return the VRRP version an advert interval needs: 3 for fractions of a second, else 2.

    VRRPv2 carries the interval in whole seconds; VRRPv3 in centiseconds.
    """
    return 2 if float(advert_int).is_integer() else 3


@dataclass(frozen=True)
class KeepalivedInputs:
    """Everything keepalived.conf depends on. Paths and names are parameters so tests can
    point keepalived at their own namespaces and directories."""

    router_id: str
    """Usually the node name."""
    interface: str
    """The private interface carrying VRRP adverts."""
    unicast_src_ip: str
    """This node's private address."""
    peers: Sequence[str]
    """Private addresses of the cluster's members; this node's own address is skipped."""
    priority: int
    notify_fifo: Path
    health_file: Path
    instance: str = "mailcow"
    virtual_router_id: int = 51
    advert_int: float = 1.0
    script_user: str = "keepalived_script"
    script_group: str | None = None
    """The script user's group; None means a group named like the user, as `useradd` creates."""
    marker_address: str = DEFAULT_MARKER_ADDRESS
    agent_process: str | None = DEFAULT_AGENT_PROCESS
    """None leaves out `track_process`. keepalived watches processes through the kernel's proc
    connector, which only works in the initial network namespace. A keepalived started in another
    namespace (the test lab) finds no process and keeps the instance in FAULT."""
    agent_delay: float = 2.0
    """Seconds the agent process may be gone (a restart) before the instance goes FAULT."""

    def __post_init__(self) -> None:
        _check_word("keepalived router_id", self.router_id)
        _check_word("keepalived instance", self.instance)
        _check_word("keepalived script_user", self.script_user)
        _check_word("keepalived script_group", self.script_group or self.script_user)
        _check_address("keepalived marker_address", self.marker_address)
        for path in (self.notify_fifo, self.health_file):
            _check_path(path)

        _check_interface(self.interface)
        _check_address("keepalived unicast_src_ip", self.unicast_src_ip)
        for peer in self.peers:
            _check_address("keepalived peer", peer)

        if not 1 <= self.priority <= 254:
            raise ConfigError(f"keepalived priority {self.priority} is out of range; expected 1..254")
        if not 1 <= self.virtual_router_id <= 255:
            raise ConfigError(f"keepalived virtual_router_id {self.virtual_router_id} is out of range; expected 1..255")
        if not (math.isfinite(self.advert_int) and 0.01 <= self.advert_int <= 255):
            raise ConfigError(f"keepalived advert_int {self.advert_int} is out of range; expected 0.01..255 seconds")
        if not (math.isfinite(self.agent_delay) and 0 <= self.agent_delay <= 60):
            raise ConfigError(f"keepalived agent_delay {self.agent_delay} is out of range; expected 0..60 seconds")

        process = self.agent_process
        if process is not None and (not process or len(process) > _PROCESS_COMM_MAX or not _WORD.match(process)):
            raise ConfigError(
                f"keepalived agent_process {self.agent_process!r} is invalid; track_process matches the kernel's "
                f"process name, which is 1..{_PROCESS_COMM_MAX} characters without spaces"
            )

        if not self.unicast_peers:
            raise ConfigError(
                f"keepalived on {self.router_id} has no unicast peer; a node alone would elect itself master, "
                "so render keepalived.conf only once the cluster's other members are known"
            )

    @property
    def unicast_peers(self) -> list[str]:
        """The other members' addresses, sorted and without duplicates or this node's own."""
        own = ipaddress.ip_address(self.unicast_src_ip)
        unique = {ipaddress.ip_address(peer) for peer in self.peers} - {own}
        return [str(address) for address in sorted(unique)]


def render_keepalived_conf(inputs: KeepalivedInputs) -> str:
    """Return the text of keepalived.conf for one node."""
    global_defs: Block = [
        ("router_id", inputs.router_id),
        ("vrrp_version", str(vrrp_version_for(inputs.advert_int))),
        ("enable_script_security", None),
        ("script_user", f"{inputs.script_user} {inputs.script_group or inputs.script_user}"),
        ("notify_fifo", str(inputs.notify_fifo)),
        # The agent re-learns the VRRP state after a restart from the SIGUSR1 data dump. This
        # option names the dump after the network namespace (/tmp/keepalived.NS.data), so several
        # keepalived in namespaces on one machine do not share one file; without a namespace
        # (production) keepalived 2.2.7 still writes /tmp/keepalived.data.
        ("data_use_instance", None),
    ]
    health_track: Block = [
        ("file", _quote(inputs.health_file)),
        ("weight", "0"),
        ("init_file", "1 overwrite"),
    ]
    instance: Block = [
        ("state", "BACKUP"),
        ("nopreempt", None),
        ("interface", inputs.interface),
        ("virtual_router_id", str(inputs.virtual_router_id)),
        ("priority", str(inputs.priority)),
        ("advert_int", _number(inputs.advert_int)),
        ("unicast_src_ip", inputs.unicast_src_ip),
        ("unicast_peer", [(peer, None) for peer in inputs.unicast_peers]),
        ("virtual_ipaddress", [(f"{inputs.marker_address}/32 dev lo scope host", None)]),
        ("track_file", [(HEALTH_TRACK_NAME, None)]),
    ]
    document: Block = [
        ("global_defs", global_defs),
        (f"track_file {HEALTH_TRACK_NAME}", health_track),
    ]
    if inputs.agent_process is not None:
        agent_track: Block = [
            ("process", inputs.agent_process),
            ("quorum", "1"),
            ("weight", "0"),
            ("delay", _number(inputs.agent_delay)),
        ]
        document.append((f"vrrp_track_process {AGENT_TRACK_NAME}", agent_track))
        instance.append(("track_process", [(AGENT_TRACK_NAME, None)]))
    document.append((f"vrrp_instance {inputs.instance}", instance))
    header = "# Rendered by mailcow-ha; `mailcow-ha peers sync` rewrites this file when membership changes.\n"
    return header + "".join(_format_block(document, depth=0))


def _format_block(block: Block, depth: int) -> list[str]:
    indent = "    " * depth
    lines: list[str] = []
    for keyword, value in block:
        if value is None:
            lines.append(f"{indent}{keyword}\n")
        elif isinstance(value, str):
            lines.append(f"{indent}{keyword} {value}\n")
        else:
            lines.append(f"{indent}{keyword} {{\n")
            lines.extend(_format_block(value, depth + 1))
            lines.append(f"{indent}}}\n")
        if depth == 0:
            lines.append("\n")
    if depth == 0 and lines:
        lines.pop()
    return lines


def _number(value: float) -> str:
    """Format seconds without a trailing `.0`, which keepalived accepts but reads oddly."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _quote(path: Path) -> str:
    return f'"{path}"'


def _check_word(what: str, value: str) -> None:
    if not _WORD.match(value):
        raise ConfigError(f"{what} {value!r} is invalid; use letters, digits, '_', '.', ':' or '-' only")


def _check_interface(name: str) -> None:
    if not name or len(name) > _INTERFACE_MAX or not _WORD.match(name):
        raise ConfigError(
            f"keepalived interface {name!r} is invalid; expected a network interface name of "
            f"1..{_INTERFACE_MAX} characters such as enp7s0"
        )


def _check_address(what: str, value: str) -> None:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        raise ConfigError(f"{what} {value!r} is not an IPv4 address; use the node's private address") from None


def _check_path(path: Path) -> None:
    text = str(path)
    if not path.is_absolute() or any(character in text for character in ' "{}\n#!'):
        raise ConfigError(f"keepalived path {text!r} is invalid; expected an absolute path without spaces or quotes")
