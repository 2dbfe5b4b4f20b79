"""User data, node config, units and firewall rendering, without Pulumi."""

from __future__ import annotations

import base64
import configparser
import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailcow_ha.config import DeadlineSettings, parse_config
from mailcow_ha.errors import ConfigError
from mailcow_ha.render.cloudinit import USER_DATA_LIMIT, node_files, render_user_data, user_data_document
from mailcow_ha.render.firewall import FirewallInputs, render_firewall
from mailcow_ha.render.nodeconfig import (
    CloudIds,
    NodeSecrets,
    floating_ip_interface,
    galera_inputs,
    keepalived_inputs,
    node_config_document,
)
from mailcow_ha.render.units import UnitInputs, format_unit, render_units
from mailcow_ha.stack import parse_stack

REPOSITORY = Path(__file__).resolve().parents[2]
STATIC = REPOSITORY / "cloud-init"
SECRETS = NodeSecrets("token-value", "galera-password-value", "status-secret-value", ("mailtos://a:b@example.org",))


def make_stack(**overrides: Any) -> Any:
    values = {
        "mailHostname": "mail.example.org",
        "runtimeRepository": "https://git.example.org/ops/mailcow-ha.git",
        "runtimeRef": "d" * 40,
        "hcloudToken": "token-value",
        **overrides,
    }
    return parse_stack(values, {"hcloudToken"}, stack="prod")


def make_cloud(index: int) -> CloudIds:
    return CloudIds([501, 502], ["203.0.113.10/32", "2001:db8:10::1/64"], 601, 700 + index)


def test_user_data_is_cloud_config() -> None:
    text = render_user_data(make_stack(), 1, make_cloud(1), SECRETS, STATIC)
    document = yaml.safe_load(text)

    assert text.startswith("#cloud-config\n")
    assert document["hostname"] == "mailcow-prod-1"
    assert "keepalived" in document["packages"]
    assert "docker-compose-plugin" in document["packages"]
    assert document["mounts"][0][:3] == ["/dev/disk/by-id/scsi-0HC_Volume_701", "/var/lib/mysql", "ext4"]
    assert "nofail" in document["mounts"][0][3]


def test_first_boot_pins_runtime_commit() -> None:
    document = user_data_document(make_stack(), 2, make_cloud(2), SECRETS, STATIC)
    command = document["runcmd"][0]

    assert command[0] == "/usr/local/lib/mailcow-ha/first-boot"
    assert command[command.index("--runtime-ref") + 1] == "d" * 40
    assert command[command.index("--mailcow-ref") + 1] == "2025-01"
    assert command[command.index("--db-device") + 1] == "/dev/disk/by-id/scsi-0HC_Volume_702"


def test_node_config_file_is_private_and_valid() -> None:
    files = {str(item.path): item for item in node_files(make_stack(), 3, make_cloud(3), SECRETS, STATIC)}
    node_file = files["/etc/mailcow-ha/node.yaml"]
    config = parse_config(yaml.safe_load(node_file.content))

    assert node_file.permissions == "0600"
    assert config.node.name == "mailcow-prod-3"
    assert str(config.node.private_ip) == "10.0.1.13"
    assert config.peers == []
    assert config.hetzner.server_id is None
    assert config.hetzner.floating_ip_ids == [501, 502]
    assert config.hetzner.shared_volume_id == 601
    assert config.keepalived.priority == 230
    assert config.hetzner.token.get_secret_value() == "token-value"
    for path, item in files.items():
        if path != "/etc/mailcow-ha/node.yaml":
            assert "token-value" not in item.content, path
            assert "galera-password-value" not in item.content, path


def test_user_data_independent_of_node_count() -> None:
    for index in (1, 2, 3):
        three = render_user_data(make_stack(nodeCount=3), index, make_cloud(index), SECRETS, STATIC)
        nine = render_user_data(make_stack(nodeCount=9), index, make_cloud(index), SECRETS, STATIC)

        assert three == nine


def test_user_data_independent_of_ssh_keys() -> None:
    """Admin keys reach servers through Hetzner's SSH keys, so long keys cost no user data."""
    keys = []
    for number in range(20):
        modulus = bytes([0, number + 1]) + bytes(511)
        blob = b"".join(len(part).to_bytes(4, "big") + part for part in (b"ssh-rsa", b"\x01\x00\x01", modulus))
        keys.append(f"ssh-rsa {base64.b64encode(blob).decode()} admin{number}@example.org")
    with_keys = make_stack(nodeCount=9, adminSshKeys=keys)

    for index in (1, 9):
        assert render_user_data(with_keys, index, make_cloud(index), SECRETS, STATIC) == render_user_data(
            make_stack(nodeCount=9), index, make_cloud(index), SECRETS, STATIC
        )


def test_user_data_within_limit_for_all_nodes() -> None:
    stack = make_stack(nodeCount=9, floatingIpv6=True)

    for index in stack.node_indexes:
        size = len(render_user_data(stack, index, make_cloud(index), SECRETS, STATIC).encode())
        assert size <= USER_DATA_LIMIT


def test_oversized_user_data_rejected(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"packages": ["x" * 40000]}), encoding="utf-8")
    (tmp_path / "first-boot.sh").write_text("#!/bin/sh\n", encoding="utf-8")

    with pytest.raises(ConfigError, match="above Hetzner's limit of 32768"):
        render_user_data(make_stack(), 1, make_cloud(1), SECRETS, tmp_path)


def test_oversized_alert_urls_named() -> None:
    urls = tuple(f"mailtos://user:{'p' * 300}@smtp{number}.example.net" for number in range(80))
    secrets = NodeSecrets("token-value", "galera-password-value", "status-secret-value", urls)

    with pytest.raises(ConfigError) as raised:
        render_user_data(make_stack(), 1, make_cloud(1), secrets, STATIC)

    assert "above Hetzner's limit of 32768" in str(raised.value)
    assert "shorten alertUrls" in str(raised.value)
    assert "p" * 300 not in str(raised.value)


def test_base_may_not_set_node_keys(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("runcmd: [[echo, hi]]\n", encoding="utf-8")
    (tmp_path / "first-boot.sh").write_text("#!/bin/sh\n", encoding="utf-8")

    with pytest.raises(ConfigError, match="may not set runcmd"):
        render_user_data(make_stack(), 1, make_cloud(1), SECRETS, tmp_path)


def test_unresolved_runtime_ref_rejected() -> None:
    with pytest.raises(ConfigError, match="runtimeRef is not resolved"):
        render_user_data(make_stack(runtimeRef=""), 1, make_cloud(1), SECRETS, STATIC)


def test_units_written_after_packages() -> None:
    """Units exist only after apt installed keepalived, whose start would otherwise pull in the agent."""
    document = user_data_document(make_stack(), 1, make_cloud(1), SECRETS, STATIC)
    files = {item["path"]: item for item in document["write_files"]}
    units = [path for path in files if path.startswith("/etc/systemd/system/")]

    assert "/etc/systemd/system/keepalived.service.d/50-mailcow-ha.conf" in units
    assert len(units) == 7
    for path in units:
        assert files[path]["defer"] is True, path
    for path in ("/etc/mailcow-ha/node.yaml", "/etc/mailcow-ha/firewall.nft", "/usr/local/lib/mailcow-ha/first-boot"):
        assert "defer" not in files[path], path


def test_files_written_as_literal_blocks() -> None:
    text = render_user_data(make_stack(), 1, make_cloud(1), SECRETS, STATIC)

    assert "  content: |\n    [Unit]\n" in text


def test_peer_inputs_from_node_config() -> None:
    document = node_config_document(make_stack(), 2, make_cloud(2), SECRETS)
    config = parse_config(document)
    members = ["10.0.1.11", "10.0.1.12", "10.0.1.13"]

    keepalived = keepalived_inputs(config, members)
    galera = galera_inputs(config, members)

    assert keepalived.unicast_src_ip == "10.0.1.12"
    assert keepalived.unicast_peers == ["10.0.1.11", "10.0.1.13"]
    assert keepalived.priority == 240
    assert keepalived.interface == "enp7s0"
    assert galera.node_address == "10.0.1.12"
    assert galera.cluster_address == "gcomm://10.0.1.11:4567,10.0.1.12:4567,10.0.1.13:4567"


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("203.0.113.10", "203.0.113.10/32"),
        ("2001:db8:10::/64", "2001:db8:10::1/64"),
        ("2001:db8:10::1", "2001:db8:10::1/64"),
    ],
)
def test_floating_ip_interface(address: str, expected: str) -> None:
    assert floating_ip_interface(address) == expected


def test_units_parse_and_restart_agent() -> None:
    units = render_units(UnitInputs(floating_ips=("203.0.113.10/32", "2001:db8:10::1/64")))
    parsed = {}
    for path, text in units.items():
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read_string(text)
        parsed[f"{path.parent.name}/{path.name}"] = parser

    agent = parsed["system/mailcow-ha-agent.service"]
    assert agent["Service"]["Restart"] == "always"
    assert agent["Unit"]["StartLimitIntervalSec"] == "0"
    assert agent["Service"]["ExecStart"] == "/opt/mailcow-ha/venv/bin/mailcow-ha-agent"
    assert parsed["system/mailcow-ha-gc.timer"]["Timer"]["OnUnitActiveSec"] == "60"
    assert parsed["system/mailcow-ha-gc.service"]["Service"]["ExecStart"].endswith("mailcow-ha gc")
    gc_timeout = float(parsed["system/mailcow-ha-gc.service"]["Service"]["TimeoutStartSec"])
    assert gc_timeout > DeadlineSettings().promote
    assert parsed["mariadb.service.d/50-mailcow-ha.conf"]["Unit"]["RequiresMountsFor"] == "/var/lib/mysql"
    floating = units[next(path for path in units if path.name == "mailcow-ha-floating-ip.service")]
    assert "ExecStart=/usr/sbin/ip address replace 203.0.113.10/32 dev eth0\n" in floating
    assert "ExecStart=/usr/sbin/ip address replace 2001:db8:10::1/64 dev eth0\n" in floating


def test_keepalived_drop_in_orders_after_agent() -> None:
    units = render_units(UnitInputs(floating_ips=("203.0.113.10/32",)))
    drop_in = next(text for path, text in units.items() if path.parent.name == "keepalived.service.d")

    assert drop_in == "[Unit]\nAfter=mailcow-ha-agent.service\nWants=mailcow-ha-agent.service\n"


def test_unit_writer_rejects_line_breaks() -> None:
    with pytest.raises(ConfigError, match="line break"):
        format_unit([("Service", [("ExecStart", "/bin/true\nExecStart=/bin/false")])])
    with pytest.raises(ConfigError, match="invalid"):
        format_unit([("Service", [("Exec Start", "/bin/true")])])


def test_firewall_limits_private_protocols() -> None:
    text = render_firewall(FirewallInputs(ipaddress.IPv4Network("10.0.1.0/24"), extra_tcp_ports=(8741,)))

    assert "ip protocol 112 ip saddr != 10.0.1.0/24 drop" in text
    assert "ip saddr != 10.0.1.0/24 tcp dport { 3306, 4444, 4567, 4568, 8741 } drop" in text
    assert "ip daddr 169.254.169.254 drop" in text
    assert text.index("delete table inet mailcow_ha") < text.index("table inet mailcow_ha {")
