"""Render the host firewall (nftables) that complements Hetzner's cloud firewall.

The cloud firewall filters the public interfaces only, so traffic on the private network reaches
every port. These rules limit VRRP (IP protocol 112), Galera (3306, 4444, 4567, 4568) and the
status API to sources inside the private subnet. They also stop forwarded traffic (containers)
from reaching the metadata address, because the user data served there contains the API token.

The rules live in their own table, replaced atomically by one `nft -f` run, so they never touch
the tables of Docker or of the distribution's nftables.conf.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from mailcow_ha.errors import ConfigError

TABLE = "mailcow_ha"
METADATA_ADDRESS = ipaddress.IPv4Address("169.254.169.254")
VRRP_PROTOCOL = 112
GALERA_TCP_PORTS = (3306, 4444, 4567, 4568)
GALERA_UDP_PORTS = (4567,)


@dataclass(frozen=True)
class FirewallInputs:
    """The private subnet and the TCP ports only its members may reach."""

    private_subnet: ipaddress.IPv4Network
    tcp_ports: Sequence[int] = GALERA_TCP_PORTS
    udp_ports: Sequence[int] = GALERA_UDP_PORTS
    extra_tcp_ports: Sequence[int] = ()
    """Further private-only TCP ports, such as the agent's status API."""

    def __post_init__(self) -> None:
        for port in (*self.tcp_ports, *self.udp_ports, *self.extra_tcp_ports):
            if not 1 <= port <= 65535:
                raise ConfigError(f"firewall port {port} is out of range; expected 1..65535")


def render_firewall(inputs: FirewallInputs) -> str:
    """Return an `nft -f` script that (re)creates the mailcow_ha table."""
    subnet = str(inputs.private_subnet)
    tcp = _set(sorted({*inputs.tcp_ports, *inputs.extra_tcp_ports}))
    udp = _set(sorted(set(inputs.udp_ports)))
    input_rules = [
        'iifname "lo" accept',
        f"ip protocol {VRRP_PROTOCOL} ip saddr != {subnet} drop",
        f"meta nfproto ipv6 meta l4proto {VRRP_PROTOCOL} drop",
        f"ip saddr != {subnet} tcp dport {tcp} drop",
        f"meta nfproto ipv6 tcp dport {tcp} drop",
        f"ip saddr != {subnet} udp dport {udp} drop",
        f"meta nfproto ipv6 udp dport {udp} drop",
    ]
    forward_rules = [f"ip daddr {METADATA_ADDRESS} drop"]
    chains = [
        ("input", "type filter hook input priority filter - 1; policy accept;", input_rules),
        ("forward", "type filter hook forward priority filter - 1; policy accept;", forward_rules),
    ]
    lines = [
        "#!/usr/sbin/nft -f",
        "# Rendered by mailcow-ha. Creating the table first lets the delete succeed on the first run.",
        f"table inet {TABLE}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
    ]
    for name, hook, rules in chains:
        lines.append(f"    chain {name} {{")
        lines.append(f"        {hook}")
        lines.extend(f"        {rule}" for rule in rules)
        lines.append("    }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _set(ports: Sequence[int]) -> str:
    return "{ " + ", ".join(str(port) for port in ports) + " }"
