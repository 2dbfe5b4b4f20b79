"""Render mailcow-dockerized's docker-compose.override.yml for a cluster node.

The override is built as data from the node config and mailcow's own docker-compose.yml, then
dumped with PyYAML. Compose merges a service's `volumes` entries by their container path, so the
certificate bind mounts are rewritten with mailcow's exact target strings, read from its file.
With any other target string, compose rejects the pair as duplicate mount points. The override:

- makes mailcow's own `mysql-mailcow` container inert, because every node runs MariaDB Galera on
  the host. It stays defined (with an entrypoint that exits at once and no restart) since other
  services name it in `depends_on`, and compose 1.29 cannot remove a service;
- binds `mysql-socket-vol-1` to the directory of the host Galera member's unix socket and gives
  every service that mounts it mailcow's database name, user and password;
- binds every stateful named volume, and the certificate directory, to
  `<mount point>/<project name>/`, the directory that promote checks before starting anything;
- sets netfilter-mailcow's `SNAT_TO_SOURCE`/`SNAT6_TO_SOURCE` to the floating IPs, so that mail
  leaves from the address that SPF and the reverse DNS name, on whichever node is master.

Postfix runs on mailcow's bridge network, where the floating IP is not a local address, so
`smtp_bind_address` would make every delivery fail; mailcow's SNAT rule is its supported way to
choose the outgoing address.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from mailcow_ha.config import NodeConfig
from mailcow_ha.errors import ConfigError

DATABASE_SERVICE = "mysql-mailcow"
"""mailcow's own database container, made inert by the override."""
SOCKET_VOLUME = "mysql-socket-vol-1"
NETFILTER_SERVICE = "netfilter-mailcow"
CERTIFICATE_SOURCES = ("./data/assets/ssl", "./data/assets/ssl/")
"""Bind mount sources that mailcow's compose file uses for its certificate directory."""
CERTIFICATE_DIRECTORY = "ssl"

STATEFUL_VOLUMES = (
    "vmail-vol-1",
    "vmail-index-vol-1",
    "crypt-vol-1",
    "redis-vol-1",
    "rspamd-vol-1",
    "postfix-vol-1",
    "sogo-web-vol-1",
    "sogo-userdata-backup-vol-1",
)
"""mailcow's named volumes that hold state (mail, indexes, crypt keys, Redis with the DKIM keys,
rspamd, the postfix queue, SOGo). Each is bound to a directory of the same name on the shared
volume. Volumes that are caches or re-downloadable (ClamAV signatures) stay on the root disk."""

STATEFUL_DIRECTORIES = (*STATEFUL_VOLUMES, CERTIFICATE_DIRECTORY)
"""The directories under `<mount point>/<project name>/` that the override binds."""

OVERRIDE_HEADER = (
    "# Written by mailcow-ha from the node config and mailcow's docker-compose.yml.\n"
    "# Do not edit: `mailcow-ha compose-override` rewrites this file.\n"
)


@dataclass(frozen=True)
class OverrideInputs:
    """What the override depends on, taken from the node config."""

    project_name: str
    mount_point: PurePosixPath
    socket_dir: PurePosixPath
    db_name: str
    db_user: str
    db_password: str | None
    snat_ipv4: str | None
    snat_ipv6: str | None

    @property
    def data_dir(self) -> PurePosixPath:
        """The project's directory on the shared volume, which promote requires."""
        return self.mount_point / self.project_name


def inputs_from_config(config: NodeConfig) -> OverrideInputs:
    """Collect the override's inputs from the node config."""
    ipv4 = [address.ip for address in config.hetzner.floating_ips if address.version == 4]
    ipv6 = [address.ip for address in config.hetzner.floating_ips if address.version == 6]
    password = config.mailcow.db_password
    return OverrideInputs(
        project_name=config.mailcow.project_name,
        mount_point=PurePosixPath(config.paths.mount_point),
        socket_dir=PurePosixPath(config.galera.socket).parent,
        db_name=config.mailcow.db_name,
        db_user=config.mailcow.db_user,
        db_password=password.get_secret_value() if password is not None else None,
        snat_ipv4=str(ipv4[0]) if ipv4 else None,
        snat_ipv6=str(ipv6[0]) if ipv6 else None,
    )


def render_override(inputs: OverrideInputs, base: Mapping[str, Any]) -> dict[str, Any]:
    """Build the override document for mailcow's parsed docker-compose.yml `base`.

    Raises ConfigError when `base` lacks a service or volume the override must change, because
    compose would otherwise create a new, incomplete service or an unbound volume.
    """
    services = _services(base)
    declared_volumes = base.get("volumes") or {}
    missing = [name for name in (*STATEFUL_VOLUMES, SOCKET_VOLUME) if name not in declared_volumes]
    if missing:
        raise ConfigError(
            f"mailcow's compose file declares no volume {', '.join(missing)}; "
            "check that the project directory holds a mailcow-dockerized checkout this version supports"
        )
    for required in (DATABASE_SERVICE, NETFILTER_SERVICE):
        if required not in services:
            raise ConfigError(f"mailcow's compose file has no service {required}; check the mailcow checkout")

    override_services: dict[str, dict[str, Any]] = {
        DATABASE_SERVICE: {
            "entrypoint": ["/bin/true"],
            "restart": "no",
            "healthcheck": {"disable": True},
            "labels": {"mailcow-ha.role": "disabled; the host runs MariaDB Galera"},
        }
    }
    for name in database_services(base):
        override_services.setdefault(name, {})["environment"] = _database_environment(inputs)
    for name, mounts in certificate_mounts(base, inputs).items():
        override_services.setdefault(name, {})["volumes"] = mounts
    snat = _snat_environment(inputs)
    if snat:
        override_services.setdefault(NETFILTER_SERVICE, {}).setdefault("environment", {}).update(snat)

    volumes: dict[str, Any] = {name: _bind_volume(inputs.data_dir / name) for name in STATEFUL_VOLUMES}
    volumes[SOCKET_VOLUME] = _bind_volume(inputs.socket_dir)
    document = {
        "x-mailcow-ha": {"project-name": inputs.project_name, "data-dir": str(inputs.data_dir)},
        "services": dict(sorted(override_services.items())),
        "volumes": volumes,
    }
    escaped: dict[str, Any] = _escape_interpolation(document)
    return escaped


def _escape_interpolation(value: Any) -> Any:
    """Double every `$` in string values, because compose substitutes `$NAME` and `${NAME}` in them.

    A database password such as `pa$word` would otherwise reach mailcow as `pa` with a warning.
    """
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, list):
        return [_escape_interpolation(item) for item in value]
    if isinstance(value, dict):
        return {key: _escape_interpolation(item) for key, item in value.items()}
    return value


def database_services(base: Mapping[str, Any]) -> list[str]:
    """Return the services that mount the database socket volume, except the disabled database."""
    names = []
    for name, service in _services(base).items():
        if name == DATABASE_SERVICE:
            continue
        sources = [_mount_source(entry) for entry in service.get("volumes") or []]
        if SOCKET_VOLUME in sources:
            names.append(name)
    return sorted(names)


def certificate_mounts(base: Mapping[str, Any], inputs: OverrideInputs) -> dict[str, list[str]]:
    """Return, per service, its certificate bind mounts re-pointed at the shared volume.

    The container path and options are kept exactly as mailcow writes them, because compose
    merges the override's entry with the base entry of the same container path.
    """
    target_dir = inputs.data_dir / CERTIFICATE_DIRECTORY
    result: dict[str, list[str]] = {}
    for name, service in _services(base).items():
        for entry in service.get("volumes") or []:
            if not isinstance(entry, str) or _mount_source(entry) not in CERTIFICATE_SOURCES:
                continue
            _, rest = entry.split(":", 1)
            result.setdefault(name, []).append(f"{target_dir}:{rest}")
    return result


def dump_override(document: Mapping[str, Any]) -> str:
    """Serialise the override with a header saying who writes it."""
    return OVERRIDE_HEADER + yaml.safe_dump(dict(document), sort_keys=False, default_flow_style=False)


def project_name_problem(env_text: str, expected: str) -> str | None:
    """Check COMPOSE_PROJECT_NAME in mailcow.conf; return a problem or None when it matches.

    A different name would make compose look for other volumes and start an empty mail server.
    """
    values = re.findall(r"^\s*COMPOSE_PROJECT_NAME\s*=\s*(\S*)\s*$", env_text, flags=re.MULTILINE)
    if not values:
        return f"mailcow.conf sets no COMPOSE_PROJECT_NAME; add COMPOSE_PROJECT_NAME={expected}"
    if values[-1].strip("\"'") != expected:
        return (
            f"mailcow.conf sets COMPOSE_PROJECT_NAME={values[-1]} but the node config expects {expected}; "
            "compose would look for another project's volumes, so make the two agree"
        )
    return None


def volume_binding_problems(inspected: Sequence[Mapping[str, Any]], inputs: OverrideInputs) -> list[str]:
    """Compare `docker volume inspect` results with the bindings the override declares.

    Compose reuses a volume that already exists under the project's name even when its options
    differ, so a volume created before the override was installed keeps writing to the root disk.
    Returns one problem per stateful volume that is bound elsewhere; a missing volume is fine,
    because compose creates it from the override.
    """
    by_name = {volume.get("Name"): volume for volume in inspected}
    expected = {name: str(inputs.data_dir / name) for name in STATEFUL_VOLUMES}
    expected[SOCKET_VOLUME] = str(inputs.socket_dir)
    problems = []
    for short_name, device in expected.items():
        full_name = f"{inputs.project_name}_{short_name}"
        volume = by_name.get(full_name)
        if volume is None:
            continue
        options = volume.get("Options") or {}
        if options.get("device") != device or options.get("o") != "bind":
            problems.append(
                f"volume {full_name} is bound to {options.get('device') or 'the root disk'}, expected {device}; "
                f"remove it with `docker volume rm {full_name}` while mailcow is stopped"
            )
    return problems


def _services(base: Mapping[str, Any]) -> Mapping[str, Any]:
    services = base.get("services")
    if not isinstance(services, Mapping) or not services:
        raise ConfigError("mailcow's compose file has no services; check the mailcow checkout")
    return services


def _mount_source(entry: Any) -> str:
    if isinstance(entry, Mapping):
        return str(entry.get("source", ""))
    return str(entry).split(":", 1)[0]


def _database_environment(inputs: OverrideInputs) -> dict[str, str]:
    environment = {"DBNAME": inputs.db_name, "DBUSER": inputs.db_user}
    if inputs.db_password is not None:
        environment["DBPASS"] = inputs.db_password
    return environment


def _snat_environment(inputs: OverrideInputs) -> dict[str, str]:
    environment = {}
    if inputs.snat_ipv4 is not None:
        environment["SNAT_TO_SOURCE"] = str(ipaddress.IPv4Address(inputs.snat_ipv4))
    if inputs.snat_ipv6 is not None:
        environment["SNAT6_TO_SOURCE"] = str(ipaddress.IPv6Address(inputs.snat_ipv6))
    return environment


def _bind_volume(device: PurePosixPath) -> dict[str, Any]:
    return {"driver": "local", "driver_opts": {"type": "none", "o": "bind", "device": str(device)}}


def load_base(compose_file: Path) -> dict[str, Any]:
    """Read mailcow's docker-compose.yml, raising ConfigError with the fix when it is unusable."""
    try:
        document = yaml.safe_load(compose_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"mailcow compose file {compose_file} not found; check mailcow.project_dir in the node config"
        ) from None
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"mailcow compose file {compose_file} could not be read: {error}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"mailcow compose file {compose_file} is not a YAML mapping; check the mailcow checkout")
    return document
