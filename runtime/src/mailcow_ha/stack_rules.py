"""The validation rules of the stack config: limits, known values, and one check per kind of value.

Each check converts a raw value and returns it, or raises ValueError whose message states the
rule, so `stack.parse_stack` can name the key and the value next to it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

MAX_CLUSTER_NAME = 60
"""Server names are `<cluster>-<index>` and Hetzner allows 63 characters."""
NODE_ADDRESS_OFFSET = 10
"""Node N gets the subnet's address number 10 + N (10.0.1.11 for node 1 of 10.0.1.0/24)."""
MAX_NODES = 9
VOLUME_MIN_GB = 10
VOLUME_MAX_GB = 10240

NETWORK_ZONES = {
    "fsn1": "eu-central",
    "nbg1": "eu-central",
    "hel1": "eu-central",
    "ash": "us-east",
    "hil": "us-west",
    "sin": "ap-southeast",
}
"""Hetzner Cloud locations and the network zone their private networks belong to."""

RESERVED_NETWORKS = {
    ipaddress.IPv4Network("172.17.0.0/16"): "Docker's default bridge network",
    ipaddress.IPv4Network("172.22.1.0/24"): "mailcow's container network",
    ipaddress.IPv4Network("172.31.1.1/32"): "Hetzner's default gateway of the public interface",
}
"""Ranges a node already routes elsewhere; a private network overlapping one breaks routing."""

MOVING_REFS = frozenset({"master", "main", "nightly", "staging", "HEAD"})

NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
FQDN_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
GIT_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$")
SERVER_TYPE = re.compile(r"^[a-z]+[0-9]+[a-z]*$")
IMAGE = re.compile(r"^debian-(1[2-9])$")
INTERFACE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
SSH_KEY = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com) [A-Za-z0-9+/=]{16,}( \S.*)?$"
)
APPRISE_URL = re.compile(r"^[a-z][a-z0-9+]{1,31}://\S+$")
REPOSITORY = re.compile(r"^(https://[^\s/@]+(/[^\s]*)?|ssh://[^\s]+|git@[^\s:]+:[^\s]+)$")


Check = Callable[[Any], Any]
"""Convert a raw value and return it, or raise ValueError with the rule it broke."""


def matches(pattern: re.Pattern[str], expected: str) -> Check:
    def check(value: Any) -> Any:
        if not pattern.match(value):
            raise ValueError(f"expected {expected}")
        return value

    return check


def in_range(low: int, high: int, unit: str) -> Check:
    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"expected {low}..{high}{' ' + unit if unit else ''}")
        return value

    return check


def check_node_count(value: int) -> int:
    if value < 3 or value > MAX_NODES or value % 2 == 0:
        raise ValueError(
            "expected 3, 5, 7 or 9: an even count can split Galera into halves without a majority, "
            "and a spread placement group holds at most 10 servers, leaving room for one replacement"
        )
    return value


def check_location(value: str) -> str:
    if value not in NETWORK_ZONES:
        raise ValueError(f"expected a Hetzner location: {', '.join(sorted(NETWORK_ZONES))}")
    return value


def check_cluster_name(value: str) -> str:
    if len(value) > MAX_CLUSTER_NAME or not NAME.match(value):
        raise ValueError(f"expected lower-case letters, digits and '-', at most {MAX_CLUSTER_NAME} characters")
    return value


def check_cidr_syntax(value: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(value, strict=True)
    except ValueError as error:
        raise ValueError(f"expected an IPv4 network such as 10.0.1.0/24 ({error})") from None


def check_network(value: str) -> ipaddress.IPv4Network:
    network = check_cidr_syntax(value)
    if not any(network.subnet_of(block) for block in PRIVATE_BLOCKS):
        raise ValueError("expected a private range inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16")
    for reserved, what in RESERVED_NETWORKS.items():
        if network.overlaps(reserved):
            raise ValueError(f"overlaps {reserved} ({what}); choose another range")
    return network


PRIVATE_BLOCKS = (
    ipaddress.IPv4Network("10.0.0.0/8"),
    ipaddress.IPv4Network("172.16.0.0/12"),
    ipaddress.IPv4Network("192.168.0.0/16"),
)


def subnet_problems(network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network) -> list[str]:
    """Return why `subnet` does not fit inside `network` with room for every node, if it does not."""
    if not subnet.subnet_of(network):
        return [f"expected a subnet inside networkCidr {network}"]
    needed = NODE_ADDRESS_OFFSET + MAX_NODES + 2
    if subnet.num_addresses < needed:
        return [
            f"expected at least {needed} addresses (/27 or larger), "
            f"because node N uses address number {NODE_ADDRESS_OFFSET} + N for N up to {MAX_NODES}"
        ]
    return []


def check_any_cidr(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as error:
        raise ValueError(f"expected a network such as 198.51.100.0/24 or 2001:db8::/48 ({error})") from None


def check_volume_size(value: int) -> int:
    if not VOLUME_MIN_GB <= value <= VOLUME_MAX_GB:
        raise ValueError(f"expected {VOLUME_MIN_GB}..{VOLUME_MAX_GB} GB, the sizes Hetzner volumes support")
    return value


def check_fqdn(value: str) -> str:
    name = value.rstrip(".").lower()
    labels = name.split(".")
    if (
        len(name) > 253
        or len(labels) < 3
        or not all(FQDN_LABEL.match(label) for label in labels)
        or not labels[-1].isalpha()
    ):
        raise ValueError("expected a fully qualified host name such as mail.example.org")
    return name


def check_mailcow_ref(value: str) -> str:
    if not GIT_REF.match(value) or ".." in value:
        raise ValueError("expected a git tag or commit of mailcow-dockerized, such as 2025-01")
    if value in MOVING_REFS:
        raise ValueError("expected a tag or commit; a branch moves, so nodes created later would run other code")
    return value


def check_runtime_ref(value: str) -> str:
    if not COMMIT.match(value):
        raise ValueError("expected a full commit id (40 lower-case hex digits); run `git rev-parse TAG` for a tag")
    return value


def check_token(value: str) -> str:
    if not value or any(character.isspace() for character in value):
        raise ValueError("expected a Hetzner API token without spaces")
    return value


def check_password(value: str) -> str:
    if len(value) < 16 or any(character.isspace() or character in "\"'\\" for character in value):
        raise ValueError("expected at least 16 characters without spaces, quotes or backslashes")
    return value


def check_alert_url(value: str) -> str:
    if not APPRISE_URL.match(value):
        raise ValueError("expected an Apprise URL such as mailtos://user:password@example.org")
    return value
