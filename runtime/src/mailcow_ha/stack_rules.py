"""The validation rules of the stack config: limits, known values, and one check per kind of value.

Each check converts a raw value and returns it, or raises ValueError whose message states the
rule, so `stack.parse_stack` can name the key and the value next to it.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
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
MAX_NETWORK_PREFIX = 24
"""Hetzner rejects a private network smaller than /24."""

SSH_KEY_FIELDS = {
    "ssh-ed25519": 2,
    "ssh-rsa": 3,
    "ecdsa-sha2-nistp256": 3,
    "ecdsa-sha2-nistp384": 3,
    "ecdsa-sha2-nistp521": 3,
    "sk-ssh-ed25519@openssh.com": 3,
    "sk-ecdsa-sha2-nistp256@openssh.com": 4,
}
"""OpenSSH public key types and how many length-prefixed fields their key data contains (RFC 4253
section 6.6, RFC 5656, RFC 8709 and OpenSSH's PROTOCOL.u2f): the type name, then the key."""
ED25519_KEY_BYTES = 32

NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
FQDN_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
GIT_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$")
SERVER_TYPE = re.compile(r"^[a-z]+[0-9]+[a-z]*$")
IMAGE = re.compile(r"^debian-(1[2-9])$")
INTERFACE = re.compile(r"^(?!\.{1,2}$)[A-Za-z0-9_.-]{1,15}$")
APPRISE_URL = re.compile(r"^[a-z][a-z0-9+]{1,31}://\S+$")
ALERT_URL_SEPARATOR = re.compile(r"\s+|,\s*(?=[a-z][a-z0-9+]{1,31}://)")
"""Whitespace, or a comma that starts the next URL. A comma inside a URL (`?to=a@x,b@y`) stays."""
REPOSITORY = re.compile(r"^https://[^\s/@]+(/\S*)?$")
DECIMAL = re.compile(r"^[+-]?[0-9]+$")


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
    if network.prefixlen > MAX_NETWORK_PREFIX:
        raise ValueError(f"expected /{MAX_NETWORK_PREFIX} or larger, the smallest private network Hetzner creates")
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
    name = value.removesuffix(".").lower()
    if not name.isascii():
        raise ValueError("expected an ASCII host name; write an internationalised name in its xn-- form")
    labels = name.split(".")
    if (
        len(name) > 253
        or len(labels) < 3
        or not all(FQDN_LABEL.match(label) for label in labels)
        or labels[-1].isdigit()
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
    # The token travels in an HTTP header, which carries ASCII only.
    if not value or not value.isascii() or not value.isprintable() or any(character.isspace() for character in value):
        raise ValueError("expected a Hetzner API token: ASCII letters and digits, without spaces")
    return value


def check_password(value: str) -> str:
    if (
        len(value) < 16
        or not value.isprintable()
        or any(character.isspace() or character in "\"'\\" for character in value)
    ):
        raise ValueError("expected at least 16 printable characters without spaces, quotes or backslashes")
    return value


def split_alert_urls(text: str) -> list[str]:
    """Split the alertUrls value into URLs, at whitespace or at a comma that starts a new URL."""
    return [url for url in ALERT_URL_SEPARATOR.split(text) if url]


def check_alert_url(value: str) -> str:
    if not APPRISE_URL.match(value):
        raise ValueError("expected an Apprise URL such as mailtos://user:password@example.org")
    if not _apprise_accepts(value):
        scheme = value.split("://", 1)[0]
        raise ValueError(
            f"Apprise cannot send to this {scheme}:// URL: the scheme is unknown or a required part is "
            "missing or malformed; check it against the Apprise documentation of that service"
        )
    return value


def _apprise_accepts(url: str) -> bool:
    """Return whether Apprise builds a notifier from `url`, the check the nodes' alerts rely on.

    Apprise logs a rejected URL in full at ERROR level, so its logger is off meanwhile.
    """
    import apprise  # noqa: PLC0415  (0.2 s to import; only stacks with alert URLs need it)

    apprise_log = logging.getLogger("apprise")
    was_disabled = apprise_log.disabled
    apprise_log.disabled = True
    try:
        return bool(apprise.Apprise.instantiate(url))
    except Exception:  # a plugin's own parser failing means the URL is unusable
        return False
    finally:
        apprise_log.disabled = was_disabled


def check_integer_text(value: str) -> int:
    """Convert a decimal integer written in ASCII digits; Python's int() would also take other scripts."""
    text = value.strip()
    if not DECIMAL.match(text):
        raise ValueError("expected an integer")
    return int(text)


def check_repository(value: str) -> str:
    """Check the URL nodes clone the runtime from at first boot, with git and no credentials of their own."""
    if value.startswith(("ssh://", "git@")):
        raise ValueError(
            "expected an https:// URL: a new node has no SSH key and no known host key, so git cannot fetch "
            "over SSH at first boot. Use the repository's public https:// URL or an https mirror"
        )
    if value.startswith("https://") and "@" in value.split("/", 3)[2]:
        raise ValueError(
            "expected an https:// URL without a user name or password: nodes pass it to git on the command "
            "line, where every local user can read it. Use a public URL or mirror"
        )
    if not REPOSITORY.match(value):
        raise ValueError("expected an https:// URL such as https://git.example.org/ops/mailcow-ha.git")
    return value


def check_ssh_key(value: str) -> str:
    """Check an OpenSSH public key line: a known type, base64 key data of that type, and a comment."""
    if any(character in value for character in "\r\n\t\0"):
        raise ValueError("expected one line; remove the line break inside the key")
    parts = value.split(" ", 2)
    if len(parts) < 2 or parts[0] not in SSH_KEY_FIELDS:
        raise ValueError(
            "expected an OpenSSH public key line 'TYPE KEY [COMMENT]' (the .pub file, without authorized_keys "
            f"options), TYPE one of {', '.join(SSH_KEY_FIELDS)}"
        )
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the key data is not valid base64; copy the whole line of the .pub file") from None
    fields = _ssh_fields(blob)
    if fields is None or len(fields) != SSH_KEY_FIELDS[parts[0]] or fields[0] != parts[0].encode():
        raise ValueError(
            f"the key data is not a complete {parts[0]} key; the line is truncated, damaged or of another type"
        )
    if parts[0].endswith("ed25519") and len(fields[1]) != ED25519_KEY_BYTES:
        raise ValueError(f"the key data is not a complete {parts[0]} key; the line is truncated or damaged")
    return value


def ssh_key_identity(value: str) -> str:
    """Return the part of a key line that Hetzner's fingerprint covers: the type and key data, not the comment."""
    return " ".join(value.split(" ", 2)[:2])


def _ssh_fields(blob: bytes) -> list[bytes] | None:
    """Split SSH wire-format key data into its length-prefixed fields; None when it does not split exactly."""
    fields: list[bytes] = []
    position = 0
    while position < len(blob):
        if position + 4 > len(blob):
            return None
        length = int.from_bytes(blob[position : position + 4], "big")
        position += 4
        if position + length > len(blob):
            return None
        fields.append(blob[position : position + length])
        position += length
    return fields
