"""The stack config: every Pulumi config key of the project, its default, and how it is read.

The Pulumi program and `mailcow-ha render` both read the stack config through `parse_stack`,
so a value that `pulumi up` rejects is rejected offline too. Every problem is reported at once,
each naming the key, the value (hidden for secrets) and the rule it broke.

Secret keys (the API token, alert URLs, database password, cluster secret) must be set with
`pulumi config set --secret`; a plain value is rejected. Offline, where the values are encrypted,
they are replaced by placeholders that name the key.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

from mailcow_ha import stack_rules as rules
from mailcow_ha.errors import ConfigError

PROJECT = "mailcow-ha"


@dataclass(frozen=True)
class Placeholder:
    """A secret whose value is not available here (encrypted in the stack file, or not set yet)."""

    key: str

    def __str__(self) -> str:
        return f"<secret {PROJECT}:{self.key}>"


@dataclass(frozen=True)
class KeySpec:
    """One config key as Pulumi.yaml declares it."""

    name: str
    type: str
    description: str
    default: Any = None
    secret: bool = False
    required: bool = False


KEYS: tuple[KeySpec, ...] = (
    KeySpec(
        "clusterName", "string", "Cluster name, the prefix of every resource name; empty means mailcow-<stack>.", ""
    ),
    KeySpec("nodeCount", "integer", "Number of servers: 3, 5, 7 or 9 (an odd count keeps a Galera majority).", 3),
    KeySpec(
        "location",
        "string",
        "Hetzner location of every server, volume and floating IP (fsn1, nbg1, hel1, ash, hil, sin); "
        "fixed at creation.",
        "fsn1",
    ),
    KeySpec(
        "serverType",
        "string",
        "Hetzner server type of new nodes; mailcow needs at least 6 GB of memory. Existing nodes keep theirs.",
        "cx32",
    ),
    KeySpec("image", "string", "Hetzner image of every node; the cloud-init targets Debian 12 or later.", "debian-12"),
    KeySpec(
        "networkCidr", "string", "Private network range (RFC 1918), /24 or larger; fixed at creation.", "10.0.0.0/16"
    ),
    KeySpec(
        "subnetCidr",
        "string",
        "Subnet of the private network that the nodes use, /27 or larger; fixed at creation.",
        "10.0.1.0/24",
    ),
    KeySpec(
        "adminSshKeys",
        "array",
        "OpenSSH public keys allowed to log in as root on nodes created afterwards; "
        "none may be in the project already.",
        [],
    ),
    KeySpec(
        "sshAllowedCidrs", "array", "Source ranges allowed to reach SSH on the public interfaces; empty closes SSH.", []
    ),
    KeySpec(
        "sharedVolumeSize",
        "integer",
        "Size in GB of the shared mail data volume (10..10240); raising it grows the volume in place.",
        100,
    ),
    KeySpec(
        "dbVolumeSize",
        "integer",
        "Size in GB of each node's Galera volume (10..10240); raising it grows the volumes in place.",
        20,
    ),
    KeySpec(
        "mailHostname",
        "string",
        "The mail server's fully qualified host name; the floating IPs' reverse DNS is set to it.",
        required=True,
    ),
    KeySpec(
        "floatingIpv6",
        "boolean",
        "Also create a floating IPv6 network (/64) for mail over IPv6; fixed at creation.",
        False,
    ),
    KeySpec(
        "hcloudToken",
        "string",
        "Hetzner API token used by the nodes at run time (read and write); set with --secret. "
        "Nodes keep the token they were created with.",
        secret=True,
        required=True,
    ),
    KeySpec(
        "alertUrls",
        "string",
        "Apprise URLs for alerts, separated by spaces; set with --secret. Nodes keep the URLs they were created with.",
        secret=True,
    ),
    KeySpec(
        "galeraPassword",
        "string",
        "Password of the runtime's database user; generated when unset; set with --secret; fixed at creation.",
        secret=True,
    ),
    KeySpec(
        "statusApiSecret",
        "string",
        "Secret shared by the nodes' status APIs; generated when unset; set with --secret; fixed at creation.",
        secret=True,
    ),
    KeySpec(
        "breakerWindow",
        "integer",
        "Seconds after an automatic failover onto a node during which the next one is refused.",
        3600,
    ),
    KeySpec(
        "advertInterval",
        "integer",
        "keepalived advert interval in seconds (1..10); failure detection takes about 3 intervals; fixed at creation.",
        1,
    ),
    KeySpec(
        "virtualRouterId",
        "integer",
        "VRRP virtual router id (1..255), unique among clusters sharing the private network; fixed at creation.",
        51,
    ),
    # NOTE: eth0 is the public interface Hetzner's floating IP guide names; enp7s0 for the private
    # network is what Debian 12 servers are reported to use and was not checked on every server type.
    KeySpec("privateInterface", "string", "Name of the private network interface on the nodes.", "enp7s0"),
    KeySpec(
        "publicInterface", "string", "Name of the public interface, where the floating IPs are configured.", "eth0"
    ),
    KeySpec("mailcowRef", "string", "mailcow-dockerized tag or commit that nodes check out at first boot.", "2025-01"),
    KeySpec(
        "runtimeRepository",
        "string",
        "Public https:// Git URL of this repository, from which nodes install the runtime at first boot.",
        required=True,
    ),
    KeySpec(
        "runtimeRef",
        "string",
        "Commit (40 hex digits) of this repository that the nodes install; empty means the checkout's HEAD.",
        "",
    ),
)
KEYS_BY_NAME = {spec.name: spec for spec in KEYS}
SECRET_KEYS = frozenset(spec.name for spec in KEYS if spec.secret)


@dataclass(frozen=True)
class StackConfig:
    """A validated stack config. Secrets are SecretStr or Placeholder, so printing one shows no value."""

    stack: str
    cluster_name: str
    node_count: int
    location: str
    server_type: str
    image: str
    network_cidr: ipaddress.IPv4Network
    subnet_cidr: ipaddress.IPv4Network
    admin_ssh_keys: tuple[str, ...]
    ssh_allowed_cidrs: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    shared_volume_size: int
    db_volume_size: int
    mail_hostname: str
    floating_ipv6: bool
    breaker_window: int
    advert_interval: int
    virtual_router_id: int
    private_interface: str
    public_interface: str
    mailcow_ref: str
    runtime_repository: str
    runtime_ref: str
    """A commit id, or empty until `resolve_runtime_ref` fills it in."""
    hcloud_token: SecretStr | Placeholder = field(repr=False)
    alert_urls: tuple[SecretStr | Placeholder, ...] = field(default=(), repr=False)
    galera_password: SecretStr | Placeholder | None = field(default=None, repr=False)
    status_api_secret: SecretStr | Placeholder | None = field(default=None, repr=False)

    @property
    def network_zone(self) -> str:
        return rules.NETWORK_ZONES[self.location]

    @property
    def node_indexes(self) -> range:
        return range(1, self.node_count + 1)

    def node_name(self, index: int) -> str:
        return f"{self.cluster_name}-{index}"

    def private_ip(self, index: int) -> ipaddress.IPv4Address:
        """Return node `index`'s static private address, which does not depend on the node count."""
        return self.subnet_cidr.network_address + rules.NODE_ADDRESS_OFFSET + index


def parse_stack(values: Mapping[str, Any], secret_keys: frozenset[str] | set[str], *, stack: str) -> StackConfig:
    """Validate raw stack config values and return the stack config.

    `values` maps key names without the `mailcow-ha:` prefix to what Pulumi stores: strings, or
    YAML values from a stack file. `secret_keys` names the keys that were set as secrets.
    Raises ConfigError listing every problem.
    """
    problems: list[str] = []
    unknown = sorted(set(values) - set(KEYS_BY_NAME))
    for key in unknown:
        problems.append(f"{PROJECT}:{key}: unknown key; known keys are listed in Pulumi.yaml (check the spelling)")

    reader = _Reader(values, frozenset(secret_keys), problems)
    node_count = reader.integer("nodeCount", rules.check_node_count)
    location = reader.text("location", rules.check_location)
    network = reader.text("networkCidr", rules.check_network)
    subnet = reader.text("subnetCidr", rules.check_cidr_syntax)
    config_values: dict[str, Any] = {
        "stack": stack,
        "cluster_name": reader.text("clusterName", rules.check_cluster_name) or _derived_cluster_name(stack, problems),
        "node_count": node_count,
        "location": location,
        "server_type": reader.text(
            "serverType", rules.matches(rules.SERVER_TYPE, "a Hetzner server type such as cx32")
        ),
        "image": reader.text(
            "image", rules.matches(rules.IMAGE, "a Debian image of release 12 or later, such as debian-12")
        ),
        "network_cidr": network,
        "subnet_cidr": subnet,
        "admin_ssh_keys": tuple(reader.array("adminSshKeys", rules.check_ssh_key)),
        "ssh_allowed_cidrs": tuple(reader.array("sshAllowedCidrs", rules.check_any_cidr)),
        "shared_volume_size": reader.integer("sharedVolumeSize", rules.check_volume_size),
        "db_volume_size": reader.integer("dbVolumeSize", rules.check_volume_size),
        "mail_hostname": reader.text("mailHostname", rules.check_fqdn),
        "floating_ipv6": reader.boolean("floatingIpv6"),
        "breaker_window": reader.integer("breakerWindow", rules.in_range(60, 86400, "seconds")),
        "advert_interval": reader.integer("advertInterval", rules.in_range(1, 10, "seconds")),
        "virtual_router_id": reader.integer("virtualRouterId", rules.in_range(1, 255, "")),
        "private_interface": reader.text(
            "privateInterface", rules.matches(rules.INTERFACE, "an interface name of 1..15 characters")
        ),
        "public_interface": reader.text(
            "publicInterface", rules.matches(rules.INTERFACE, "an interface name of 1..15 characters")
        ),
        "mailcow_ref": reader.text("mailcowRef", rules.check_mailcow_ref),
        "runtime_repository": reader.text("runtimeRepository", rules.check_repository),
        "runtime_ref": reader.text("runtimeRef", rules.check_runtime_ref),
        "hcloud_token": reader.secret("hcloudToken", rules.check_token),
        "alert_urls": tuple(reader.secret_list("alertUrls", rules.check_alert_url)),
        "galera_password": reader.secret("galeraPassword", rules.check_password),
        "status_api_secret": reader.secret("statusApiSecret", rules.check_password),
    }
    if isinstance(network, ipaddress.IPv4Network) and isinstance(subnet, ipaddress.IPv4Network):
        for rule in rules.subnet_problems(network, subnet):
            problems.append(f"{PROJECT}:subnetCidr: invalid value '{subnet}'; {rule}")
    problems.extend(_duplicate_key_problems(config_values["admin_ssh_keys"]))

    if problems:
        lines = [f"stack {stack!r} config is invalid ({len(problems)} problem(s)); fix these keys:"]
        lines.extend(f"  {problem}" for problem in problems)
        raise ConfigError("\n".join(lines))
    return StackConfig(**config_values)


def _derived_cluster_name(stack: str, problems: list[str]) -> str:
    """Return mailcow-<stack>, the cluster name when clusterName is unset, noting a problem if it is invalid."""
    name = f"mailcow-{stack}"
    try:
        rules.check_cluster_name(name)
    except ValueError as error:
        problems.append(
            f"{PROJECT}:clusterName: unset, so the cluster name is derived from stack {stack!r} as {name!r}, "
            f"which is invalid ({error}); set clusterName explicitly"
        )
    return name


def _duplicate_key_problems(keys: tuple[Any, ...]) -> list[str]:
    """Hetzner rejects a second SSH key with the same fingerprint, so each key may appear once."""
    problems = []
    seen: dict[str, int] = {}
    for position, key in enumerate(keys, start=1):
        if not isinstance(key, str):
            continue
        identity = rules.ssh_key_identity(key)
        if identity in seen:
            problems.append(
                f"{PROJECT}:adminSshKeys: key number {position} repeats key number {seen[identity]} "
                "(comments aside); Hetzner keeps one copy of a key per project, so list it once"
            )
        seen.setdefault(identity, position)
    return problems


class _Reader:
    """Reads keys with their defaults, collecting every problem instead of stopping at the first."""

    def __init__(self, values: Mapping[str, Any], secret_keys: frozenset[str], problems: list[str]):
        self.values = values
        self.secret_keys = secret_keys
        self.problems = problems

    def _raw(self, key: str) -> Any:
        spec = KEYS_BY_NAME[key]
        value = self.values.get(key)
        if key in self.secret_keys and value is not None:
            self.problems.append(
                f"{PROJECT}:{key}: set as a secret, but it is not one: the offline review cannot decrypt it and "
                f"the program would use it in clear; run `pulumi config set {key} VALUE` without --secret"
            )
            return None
        if value is None or (value == "" and spec.required):
            if spec.required and not spec.secret:
                self.problems.append(f"{PROJECT}:{key}: missing; set it with `pulumi config set {key} VALUE`")
            return spec.default
        return value

    def _fail(self, key: str, value: Any, rule: str) -> None:
        shown = "<hidden>" if KEYS_BY_NAME[key].secret else repr(value)
        self.problems.append(f"{PROJECT}:{key}: invalid value {shown}; {rule}")

    def _apply(self, key: str, value: Any, check: rules.Check) -> Any:
        try:
            return check(value)
        except ValueError as error:
            self._fail(key, value, str(error))
            return None

    def text(self, key: str, check: rules.Check) -> Any:
        value = self._raw(key)
        if value is None:
            return None
        if not isinstance(value, str):
            self._fail(key, value, "expected a string")
            return None
        if value == "" and KEYS_BY_NAME[key].default == "":
            return ""
        return self._apply(key, value.strip(), check)

    def integer(self, key: str, check: rules.Check) -> Any:
        value = self._raw(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | str):
            self._fail(key, value, "expected an integer")
            return None
        try:
            number = value if isinstance(value, int) else rules.check_integer_text(value)
        except ValueError as error:
            self._fail(key, value, str(error))
            return None
        return self._apply(key, number, check)

    def boolean(self, key: str) -> Any:
        value = self._raw(key)
        if value is None:
            return None
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false"}:
            return value.lower() == "true"
        self._fail(key, value, "expected true or false")
        return None

    def array(self, key: str, check: rules.Check) -> list[Any]:
        value = self._raw(key)
        if value is None:
            return []
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                self._fail(key, value, "expected a list, set with `pulumi config set --path 'KEY[0]' VALUE`")
                return []
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            self._fail(key, value, "expected a list of strings")
            return []
        return [self._apply(key, item, check) for item in value]

    def secret(self, key: str, check: rules.Check) -> SecretStr | Placeholder | None:
        spec = KEYS_BY_NAME[key]
        value = self.values.get(key)
        if isinstance(value, Placeholder):
            return value
        if value is None or value == "":
            if spec.required:
                self.problems.append(f"{PROJECT}:{key}: missing; set it with `pulumi config set --secret {key}`")
            return None
        if key not in self.secret_keys:
            self.problems.append(
                f"{PROJECT}:{key}: given as plain text, which stores it unencrypted; "
                f"run `pulumi config rm {key}` and `pulumi config set --secret {key}`"
            )
            return None
        if not isinstance(value, str):
            self._fail(key, value, "expected a string")
            return None
        checked = self._apply(key, value.strip(), check)
        return None if checked is None else SecretStr(checked)

    def secret_list(self, key: str, check: rules.Check) -> list[SecretStr | Placeholder]:
        value = self.secret(key, lambda text: text)
        if value is None or isinstance(value, Placeholder):
            return [] if value is None else [value]
        urls: list[SecretStr | Placeholder] = []
        for position, item in enumerate(rules.split_alert_urls(value.get_secret_value()), start=1):
            try:
                urls.append(SecretStr(check(item)))
            except ValueError as error:
                self.problems.append(f"{PROJECT}:{key}: URL number {position} is invalid; {error}")
        return urls
