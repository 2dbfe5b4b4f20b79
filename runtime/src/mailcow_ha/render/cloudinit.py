"""Render a node's cloud-init user data: a document built as data and dumped to YAML.

The static parts (packages, apt sources, users, the first-boot script) are read from the
repository's `cloud-init/` directory; the renderer adds what depends on the node. Nothing in
the result depends on the node count, so the user data of an existing node stays the same when
the cluster scales out (a changed user_data would make the provider replace the server).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from mailcow_ha.errors import ConfigError
from mailcow_ha.render.firewall import FirewallInputs, render_firewall
from mailcow_ha.render.nodeconfig import (
    NODE_CONFIG_PATH,
    STATUS_API_PORT,
    CloudIds,
    NodeSecrets,
    node_config_document,
    volume_device,
)
from mailcow_ha.render.units import UNIT_DIR, UnitInputs, render_units
from mailcow_ha.stack import StackConfig

USER_DATA_LIMIT = 32 * 1024
"""Hetzner Cloud accepts user data of at most 32 KiB."""
HEADER = "#cloud-config\n"
FIRST_BOOT_PATH = PurePosixPath("/usr/local/lib/mailcow-ha/first-boot")
FIREWALL_PATH = Path("/etc/mailcow-ha/firewall.nft")
GALERA_DATA_DIR = Path("/var/lib/mysql")
MAILCOW_DIR = Path("/opt/mailcow-dockerized")
MAILCOW_REPOSITORY = "https://github.com/mailcow/mailcow-dockerized.git"
DEVICE_TIMEOUT_SECONDS = 300


@dataclass(frozen=True)
class NodeFile:
    """One file that cloud-init writes, with its mode."""

    path: PurePosixPath
    content: str
    permissions: str

    @property
    def deferred(self) -> bool:
        """Whether cloud-init writes the file only after installing the packages (write_files `defer`).

        Systemd units are deferred: installing keepalived starts keepalived.service, and with the
        drop-in already in place systemd would start the agent too, before first boot installed it.
        """
        return self.path.is_relative_to(UNIT_DIR)


def node_files(
    stack: StackConfig, index: int, cloud: CloudIds, secrets: NodeSecrets, static_dir: Path
) -> list[NodeFile]:
    """Return every file the user data of node `index` writes, in order."""
    document = node_config_document(stack, index, cloud, secrets)
    units = render_units(
        UnitInputs(
            node_config=NODE_CONFIG_PATH,
            firewall_rules=FIREWALL_PATH,
            galera_data_dir=GALERA_DATA_DIR,
            public_interface=stack.public_interface,
            floating_ips=tuple(cloud.floating_ips),
        )
    )
    firewall = render_firewall(FirewallInputs(stack.subnet_cidr, extra_tcp_ports=(STATUS_API_PORT,)))
    files = [
        NodeFile(PurePosixPath(NODE_CONFIG_PATH), yaml.safe_dump(document, sort_keys=False), "0600"),
        NodeFile(PurePosixPath(FIREWALL_PATH), firewall, "0644"),
        NodeFile(FIRST_BOOT_PATH, _read_static(static_dir, "first-boot.sh"), "0755"),
    ]
    files.extend(NodeFile(path, text, "0644") for path, text in units.items())
    return files


def user_data_document(
    stack: StackConfig, index: int, cloud: CloudIds, secrets: NodeSecrets, static_dir: Path
) -> dict[str, Any]:
    """Return the user data of node `index` as a document (the static base plus this node's parts)."""
    document: dict[str, Any] = dict(_load_base(static_dir))
    document["hostname"] = stack.node_name(index)
    document["write_files"] = [
        {
            "path": str(item.path),
            "owner": "root:root",
            "permissions": item.permissions,
            **({"defer": True} if item.deferred else {}),
            "content": item.content,
        }
        for item in node_files(stack, index, cloud, secrets, static_dir)
    ]
    document["mounts"] = [
        [
            str(volume_device(cloud.db_volume_id)),
            str(GALERA_DATA_DIR),
            "ext4",
            f"defaults,nofail,x-systemd.device-timeout={DEVICE_TIMEOUT_SECONDS}s",
            "0",
            "2",
        ]
    ]
    document["runcmd"] = [
        [
            str(FIRST_BOOT_PATH),
            "--runtime-repository",
            stack.runtime_repository,
            "--runtime-ref",
            stack.runtime_ref,
            "--mailcow-repository",
            MAILCOW_REPOSITORY,
            "--mailcow-ref",
            stack.mailcow_ref,
            "--mailcow-dir",
            str(MAILCOW_DIR),
            "--db-device",
            str(volume_device(cloud.db_volume_id)),
            "--db-dir",
            str(GALERA_DATA_DIR),
            "--device-timeout",
            str(DEVICE_TIMEOUT_SECONDS),
        ]
    ]
    return document


def render_user_data(stack: StackConfig, index: int, cloud: CloudIds, secrets: NodeSecrets, static_dir: Path) -> str:
    """Return the user data text of node `index`; raise ConfigError above Hetzner's 32 KiB limit."""
    if not stack.runtime_ref:
        raise ConfigError("runtimeRef is not resolved; user data must pin the runtime to one commit")
    document = user_data_document(stack, index, cloud, secrets, static_dir)
    text = HEADER + yaml.dump(document, Dumper=_BlockDumper, sort_keys=False, width=1000)
    size = len(text.encode("utf-8"))
    if size > USER_DATA_LIMIT:
        config_size = len(yaml.safe_dump(node_config_document(stack, index, cloud, secrets)).encode("utf-8"))
        raise ConfigError(
            f"user data of {stack.node_name(index)} is {size} bytes, above Hetzner's limit of {USER_DATA_LIMIT}. "
            f"The node config, with the alert URLs, takes {config_size} bytes of it, the static parts in "
            "cloud-init/ the rest; shorten alertUrls or the static parts"
        )
    return text


class _BlockDumper(yaml.SafeDumper):
    """A safe dumper that writes multi-line strings as literal blocks, so files read as files."""


def _represent_text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _represent_text)


def _load_base(static_dir: Path) -> Mapping[str, Any]:
    text = _read_static(static_dir, "base.yaml")
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{static_dir / 'base.yaml'} is not valid YAML: {error}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{static_dir / 'base.yaml'} must contain a mapping of cloud-init keys")
    overlap = sorted(set(document) & {"hostname", "write_files", "mounts", "runcmd"})
    if overlap:
        raise ConfigError(f"{static_dir / 'base.yaml'} may not set {', '.join(overlap)}; the renderer sets them")
    return document


def _read_static(static_dir: Path, name: str) -> str:
    path = static_dir / name
    try:
        return path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"static cloud-init part {path} could not be read: {error.strerror}") from None
