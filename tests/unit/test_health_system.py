"""The mount and floating IP probes against this machine's real mount table and interfaces."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from mailcow_ha.adapters import blockdev, netif
from mailcow_ha.deadline import Deadline
from mailcow_ha.health.system import FloatingIpProbe, MountProbe, check_master_mount, missing_floating_ips
from mailcow_ha.health.verdict import Role


def test_missing_floating_ips_by_address() -> None:
    configured = [ipaddress.ip_interface("203.0.113.10/32"), ipaddress.ip_interface("2001:db8::1/64")]
    present = [ipaddress.ip_interface("203.0.113.10/24")]

    assert missing_floating_ips(configured, present) == ["2001:db8::1/64"]


def test_loopback_address_found() -> None:
    probe = FloatingIpProbe("lo", [ipaddress.ip_interface("127.0.0.1/8")], interval=1.0)

    result = probe.check(Role.MASTER, Deadline.after("test", 2))

    assert result.ok, result.detail
    assert probe.present == ("127.0.0.1/8",)


def test_missing_floating_ip_fails_on_master_only() -> None:
    probe = FloatingIpProbe("lo", [ipaddress.ip_interface("203.0.113.77/32")], interval=1.0)

    master = probe.check(Role.MASTER, Deadline.after("test", 2))
    standby = probe.check(Role.STANDBY, Deadline.after("test", 2))

    assert not master.ok
    assert master.detail == "203.0.113.77/32 not configured on lo"
    assert standby.ok
    assert standby.detail == "0 of 1 floating IP(s) on lo (checked on the master only)"


def test_unknown_interface_fails() -> None:
    probe = FloatingIpProbe("no-such-if0", [ipaddress.ip_interface("203.0.113.77/32")], interval=1.0)

    result = probe.check(Role.MASTER, Deadline.after("test", 2))

    assert not result.ok
    assert "not found" in result.detail


def test_plain_directory_is_not_the_volume(tmp_path: Path) -> None:
    entries = blockdev.read_mountinfo()

    ok, detail = check_master_mount(entries, tmp_path, cluster="c", volume_id=1)

    assert not ok
    assert detail == f"{tmp_path} is not a mount point"


def test_mount_probe_by_role(tmp_path: Path) -> None:
    probe = MountProbe(tmp_path, tmp_path / "absent-device", cluster="c", volume_id=1, interval=1.0)

    standby = probe.check(Role.STANDBY, Deadline.after("test", 2))
    master = probe.check(Role.MASTER, Deadline.after("test", 2))

    assert standby.ok
    assert not master.ok
    assert not probe.mounted


def test_netif_parse_ignores_other_interfaces() -> None:
    addresses = netif.interface_addresses("lo")

    assert ipaddress.ip_interface("127.0.0.1/8") in addresses
