"""Render the systemd units a node runs: the agent, the gc timer, and drop-ins ordering others.

Units are built as data (sections of key/value pairs, keys may repeat) and written by one small
writer that rejects values systemd would read differently from what they show.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from mailcow_ha.config import DeadlineSettings
from mailcow_ha.errors import ConfigError

UnitSection = tuple[str, Sequence[tuple[str, str]]]
_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")

AGENT_UNIT = "mailcow-ha-agent.service"
GC_SERVICE = "mailcow-ha-gc.service"
GC_TIMER = "mailcow-ha-gc.timer"
FIREWALL_UNIT = "mailcow-ha-firewall.service"
FLOATING_IP_UNIT = "mailcow-ha-floating-ip.service"
KEEPALIVED_DROP_IN = "keepalived.service.d/50-mailcow-ha.conf"
MARIADB_DROP_IN = "mariadb.service.d/50-mailcow-ha.conf"
UNIT_DIR = PurePosixPath("/etc/systemd/system")
ENABLED_UNITS = (FIREWALL_UNIT, FLOATING_IP_UNIT, AGENT_UNIT, GC_TIMER)
"""Units that first boot enables, in start order; keepalived follows once peers are known."""


@dataclass(frozen=True)
class UnitInputs:
    """Paths the units refer to; tests point them at their own directories."""

    venv_bin: Path = Path("/opt/mailcow-ha/venv/bin")
    node_config: Path = Path("/etc/mailcow-ha/node.yaml")
    firewall_rules: Path = Path("/etc/mailcow-ha/firewall.nft")
    galera_data_dir: Path = Path("/var/lib/mysql")
    public_interface: str = "eth0"
    floating_ips: Sequence[str] = ()
    """Addresses with prefix length, as `ip address replace` takes them (203.0.113.10/32)."""
    gc_interval_seconds: int = 60
    gc_timeout_seconds: int = int(DeadlineSettings().promote) + 120
    """gc may re-run a promote to repair drift, so systemd must not stop it before the promote's
    own deadline (`deadlines.promote`) has passed."""


def format_unit(sections: Sequence[UnitSection]) -> str:
    """Write a unit file; a key may appear several times in a section, as systemd allows."""
    blocks: list[str] = []
    for name, entries in sections:
        if not _KEY.match(name):
            raise ConfigError(f"unit section name {name!r} is invalid")
        lines = [f"[{name}]"]
        for key, value in entries:
            if not _KEY.match(key):
                raise ConfigError(f"unit key {key!r} in [{name}] is invalid")
            if "\n" in value or "\r" in value or value != value.strip():
                raise ConfigError(f"unit value of {key} in [{name}] has a line break or edge spaces: {value!r}")
            lines.append(f"{key}={value}")
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def render_units(inputs: UnitInputs) -> dict[PurePosixPath, str]:
    """Return every unit file and drop-in, keyed by its path under /etc/systemd/system."""
    if not inputs.floating_ips:
        raise ConfigError("units need at least one floating IP to configure on the public interface")
    units = {
        AGENT_UNIT: _agent(inputs),
        GC_SERVICE: _gc_service(inputs),
        GC_TIMER: _gc_timer(inputs),
        FIREWALL_UNIT: _firewall(inputs),
        FLOATING_IP_UNIT: _floating_ip(inputs),
        KEEPALIVED_DROP_IN: _keepalived_drop_in(),
        MARIADB_DROP_IN: _mariadb_drop_in(inputs),
    }
    return {UNIT_DIR / name: format_unit(sections) for name, sections in units.items()}


def _environment(inputs: UnitInputs) -> tuple[str, str]:
    return ("Environment", f"MAILCOW_HA_CONFIG={inputs.node_config}")


def _agent(inputs: UnitInputs) -> list[UnitSection]:
    return [
        (
            "Unit",
            [
                ("Description", "mailcow-ha agent: health checks, promote and demote for keepalived"),
                ("After", f"network-online.target docker.service mariadb.service {FIREWALL_UNIT}"),
                ("Wants", "network-online.target"),
                # Never stop restarting: a dead agent keeps the node in FAULT through track_process.
                ("StartLimitIntervalSec", "0"),
            ],
        ),
        (
            "Service",
            [
                ("Type", "simple"),
                _environment(inputs),
                ("ExecStart", str(inputs.venv_bin / "mailcow-ha-agent")),
                ("Restart", "always"),
                ("RestartSec", "2"),
                ("RuntimeDirectory", "mailcow-ha"),
                ("RuntimeDirectoryMode", "0750"),
                # keepalived reads the health file and FIFO there, also while the agent restarts.
                ("RuntimeDirectoryPreserve", "yes"),
                ("StateDirectory", "mailcow-ha"),
                ("StateDirectoryMode", "0700"),
                ("TimeoutStopSec", "120"),
            ],
        ),
        ("Install", [("WantedBy", "multi-user.target")]),
    ]


def _gc_service(inputs: UnitInputs) -> list[UnitSection]:
    return [
        (
            "Unit",
            [
                ("Description", "mailcow-ha gc: residues, drift, peer sync, file system growth"),
                ("After", AGENT_UNIT),
            ],
        ),
        (
            "Service",
            [
                ("Type", "oneshot"),
                _environment(inputs),
                ("ExecStart", f"{inputs.venv_bin / 'mailcow-ha'} gc"),
                ("TimeoutStartSec", str(inputs.gc_timeout_seconds)),
            ],
        ),
    ]


def _gc_timer(inputs: UnitInputs) -> list[UnitSection]:
    return [
        ("Unit", [("Description", "Run mailcow-ha gc every minute")]),
        (
            "Timer",
            [
                ("OnBootSec", "120"),
                ("OnUnitActiveSec", str(inputs.gc_interval_seconds)),
                ("AccuracySec", "5"),
            ],
        ),
        ("Install", [("WantedBy", "timers.target")]),
    ]


def _firewall(inputs: UnitInputs) -> list[UnitSection]:
    return [
        (
            "Unit",
            [
                ("Description", "mailcow-ha host firewall: VRRP and Galera from the private subnet only"),
                ("Wants", "network-pre.target"),
                ("Before", "network-pre.target docker.service keepalived.service mariadb.service"),
            ],
        ),
        (
            "Service",
            [
                ("Type", "oneshot"),
                ("RemainAfterExit", "yes"),
                ("ExecStart", f"/usr/sbin/nft -f {inputs.firewall_rules}"),
                ("ExecStop", "/usr/sbin/nft delete table inet mailcow_ha"),
            ],
        ),
        ("Install", [("WantedBy", "multi-user.target")]),
    ]


def _floating_ip(inputs: UnitInputs) -> list[UnitSection]:
    commands = [
        ("ExecStart", f"/usr/sbin/ip address replace {address} dev {inputs.public_interface}")
        for address in inputs.floating_ips
    ]
    return [
        (
            "Unit",
            [
                ("Description", "Configure the floating IPs on the public interface of every node"),
                ("After", "network-online.target networking.service"),
                ("Wants", "network-online.target"),
                # A restart of ifupdown's networking.service drops the addresses, so redo them then.
                ("PartOf", "networking.service"),
            ],
        ),
        ("Service", [("Type", "oneshot"), ("RemainAfterExit", "yes"), *commands]),
        ("Install", [("WantedBy", "multi-user.target")]),
    ]


def _keepalived_drop_in() -> list[UnitSection]:
    return [("Unit", [("After", AGENT_UNIT), ("Wants", AGENT_UNIT)])]


def _mariadb_drop_in(inputs: UnitInputs) -> list[UnitSection]:
    # The Galera data directory is the node's own volume; never start on the root disk instead.
    return [("Unit", [("RequiresMountsFor", str(inputs.galera_data_dir))])]
