"""Render the MariaDB option file that makes the local server a Galera cluster member.

The file is built as data (sections of option names and values) and written by one small
writer, which quotes values and rejects characters an option file cannot carry. Every path and
port is a parameter, so tests and the lab run several members on one machine with their own
directories, sockets and ports.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mailcow_ha.errors import ConfigError

DEFAULT_PROVIDER = Path("/usr/lib/galera/libgalera_smm.so")
SST_METHODS = ("rsync", "mariabackup")

OptionValue = str | int | None
"""An option's value; None writes the bare option name (a flag such as `skip-name-resolve`)."""
Sections = Mapping[str, Mapping[str, OptionValue]]

_SIZE = re.compile(r"^[1-9][0-9]*[KMG]?$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_OPTION = re.compile(r"^[a-z0-9_-]+$")
_NEEDS_QUOTES = re.compile(r"[\s;#=]")


@dataclass(frozen=True)
class GaleraInputs:
    """Everything the Galera option file depends on, for one member."""

    cluster_name: str
    node_name: str
    node_address: str
    """This member's private IPv4 address; the server and Galera bind to it."""
    peer_addresses: Sequence[str]
    """Every member's `address` or `address:group port`, this member included or not."""
    data_dir: Path = Path("/var/lib/mysql")
    socket: Path = Path("/run/mysqld/mysqld.sock")
    pid_file: Path = Path("/run/mysqld/mysqld.pid")
    log_error: Path = Path("/var/log/mysql/error.log")
    port: int = 3306
    group_port: int = 4567
    """Galera replication; peers given without a port are reached on this port too."""
    ist_port: int = 4568
    sst_port: int = 4444
    sst_method: str = "rsync"
    user: str = "mysql"
    """The system user mariadbd runs as; rsync SST fails when it runs as root."""
    buffer_pool_size: str = "256M"
    gcache_size: str = "512M"
    provider: Path = DEFAULT_PROVIDER
    extra_mysqld: Mapping[str, OptionValue] = field(default_factory=dict)
    """Further [mysqld] options (for example `max_connections`); they may not replace rendered ones."""

    def __post_init__(self) -> None:
        _check_name("galera cluster_name", self.cluster_name)
        _check_name("galera node_name", self.node_name)
        _check_ipv4("galera node_address", self.node_address)
        if not self.peer_addresses:
            raise ConfigError(
                "galera peer_addresses is empty; list every member's private address "
                "(a new cluster's first member bootstraps with --wsrep-new-cluster, not an empty list)"
            )
        for peer in self.peer_addresses:
            _split_peer(peer, self.group_port)

        for what, path in (
            ("data_dir", self.data_dir),
            ("socket", self.socket),
            ("pid_file", self.pid_file),
            ("log_error", self.log_error),
            ("provider", self.provider),
        ):
            if not path.is_absolute():
                raise ConfigError(f"galera {what} {str(path)!r} must be an absolute path")

        ports = {"port": self.port, "group_port": self.group_port, "ist_port": self.ist_port, "sst_port": self.sst_port}
        for what, port in ports.items():
            _check_port(f"galera {what}", port)
        if len(set(ports.values())) != len(ports):
            raise ConfigError(f"galera ports must differ from each other, got {ports}")

        if self.sst_method not in SST_METHODS:
            raise ConfigError(f"galera sst_method {self.sst_method!r} is not supported; use one of {SST_METHODS}")
        _check_name("galera user", self.user)
        for what, size in (("buffer_pool_size", self.buffer_pool_size), ("gcache_size", self.gcache_size)):
            if not _SIZE.match(size):
                raise ConfigError(f"galera {what} {size!r} is invalid; expected a size such as 128M or 2G")
        clashes = sorted(set(self.extra_mysqld) & set(_mysqld_options(self)))
        if clashes:
            raise ConfigError(f"galera extra_mysqld may not replace rendered options: {', '.join(clashes)}")

    @property
    def cluster_address(self) -> str:
        """The `gcomm://` URL listing every member, sorted, with its group port."""
        members = {_split_peer(peer, self.group_port) for peer in self.peer_addresses}
        ordered = sorted(members, key=lambda member: (ipaddress.IPv4Address(member[0]), member[1]))
        return "gcomm://" + ",".join(f"{address}:{port}" for address, port in ordered)


def render_galera_cnf(inputs: GaleraInputs) -> str:
    """Return the text of the option file for one Galera member."""
    sections: dict[str, dict[str, OptionValue]] = {
        "mysqld": {**_mysqld_options(inputs), **inputs.extra_mysqld},
        "galera": {
            "wsrep_on": "ON",
            "wsrep_provider": str(inputs.provider),
            "wsrep_cluster_name": inputs.cluster_name,
            "wsrep_cluster_address": inputs.cluster_address,
            "wsrep_node_name": inputs.node_name,
            "wsrep_node_address": f"{inputs.node_address}:{inputs.group_port}",
            "wsrep_sst_method": inputs.sst_method,
            "wsrep_sst_receive_address": f"{inputs.node_address}:{inputs.sst_port}",
            "wsrep_provider_options": ";".join(
                [
                    f"gmcast.listen_addr=tcp://{inputs.node_address}:{inputs.group_port}",
                    f"ist.recv_addr={inputs.node_address}:{inputs.ist_port}",
                    f"gcache.size={inputs.gcache_size}",
                ]
            ),
        },
        "client": {"socket": str(inputs.socket), "port": inputs.port},
    }
    header = "# Rendered by mailcow-ha; `mailcow-ha peers sync` rewrites this file when membership changes.\n"
    return header + format_option_file(sections)


def format_option_file(sections: Sections) -> str:
    """Write sections of options in MariaDB's option file syntax.

    Values with spaces, `;`, `#` or `=` are double-quoted. Values that would need escaping
    (quotes, backslashes, line breaks) raise ConfigError, because the file must mean what it shows.
    """
    blocks: list[str] = []
    for section, options in sections.items():
        if not _NAME.match(section):
            raise ConfigError(f"option file section {section!r} is invalid")
        lines = [f"[{section}]"]
        for name, value in options.items():
            if not _OPTION.match(name):
                raise ConfigError(f"option name {name!r} in [{section}] is invalid")
            if value is None:
                lines.append(name)
            else:
                lines.append(f"{name} = {_format_value(section, name, value)}")
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def _mysqld_options(inputs: GaleraInputs) -> dict[str, OptionValue]:
    return {
        "user": inputs.user,
        "bind-address": inputs.node_address,
        "port": inputs.port,
        "datadir": str(inputs.data_dir),
        "socket": str(inputs.socket),
        "pid-file": str(inputs.pid_file),
        "log-error": str(inputs.log_error),
        "binlog_format": "ROW",
        "default_storage_engine": "InnoDB",
        "innodb_autoinc_lock_mode": 2,
        "innodb_buffer_pool_size": inputs.buffer_pool_size,
    }


def _format_value(section: str, name: str, value: str | int) -> str:
    text = str(value)
    if any(character in text for character in "\"'\\\n\r") or not text:
        raise ConfigError(f"option {name} in [{section}] has a value that cannot be written: {text!r}")
    return f'"{text}"' if _NEEDS_QUOTES.search(text) else text


def _split_peer(peer: str, default_port: int) -> tuple[str, int]:
    address, separator, port_text = peer.partition(":")
    _check_ipv4("galera peer address", address)
    if not separator:
        return address, default_port
    if not port_text.isdigit():
        raise ConfigError(f"galera peer {peer!r} has an invalid port; expected ADDRESS or ADDRESS:PORT")
    port = int(port_text)
    _check_port(f"galera peer {peer!r} port", port)
    return address, port


def _check_ipv4(what: str, value: str) -> None:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        raise ConfigError(f"{what} {value!r} is not an IPv4 address") from None


def _check_port(what: str, port: int) -> None:
    if not 1 <= port <= 65535:
        raise ConfigError(f"{what} {port} is out of range; expected 1..65535")


def _check_name(what: str, value: str) -> None:
    if not _NAME.match(value):
        raise ConfigError(f"{what} {value!r} is invalid; use letters, digits, '_', '.' or '-' only")
