"""The node config schema: valid documents load, every invalid key is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.nodeconfig import deep_update, node_config_dict, write_node_config
from mailcow_ha.config import load_config, parse_config
from mailcow_ha.errors import ConfigError


def test_valid_config_loads(tmp_path: Path) -> None:
    config = load_config(write_node_config(tmp_path / "node.yaml", node_config_dict()))

    assert config.node.name == "mailcow-ha-test-1"
    assert config.volume_device == Path("/dev/disk/by-id/scsi-0HC_Volume_301")
    assert config.breaker.window == 3600


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("node.index", 0, "node.index"),
        ("node.index", 10, "node.index"),
        ("node.private_ip", "10.0.1.999", "node.private_ip"),
        ("node.name", "Bad_Name", "node.name"),
        ("hetzner.server_id", 0, "hetzner.server_id"),
        ("hetzner.floating_ip_ids", [], "hetzner.floating_ip_ids"),
        ("hetzner.endpoint", "ftp://example", "hetzner.endpoint"),
        ("hetzner.request_timeout", -1, "hetzner.request_timeout"),
        ("breaker.window", 0, "breaker.window"),
        ("health.grace_period", 7200, "health.grace_period"),
        ("keepalived.priority", 255, "keepalived.priority"),
        ("status_api.port", 80, "status_api.port"),
        ("paths.unknown_path", "/tmp", "paths.unknown_path"),
    ],
)
def test_invalid_key_is_named(key: str, value: object, expected: str) -> None:
    document = deep_update(node_config_dict(), key, value)

    with pytest.raises(ConfigError) as raised:
        parse_config(document)

    assert expected in str(raised.value)


def test_missing_section_is_named() -> None:
    document = node_config_dict()
    del document["hetzner"]

    with pytest.raises(ConfigError, match="hetzner"):
        parse_config(document)


def test_duplicate_peer_rejected() -> None:
    document = node_config_dict()
    document["peers"][2]["private_ip"] = document["peers"][1]["private_ip"]

    with pytest.raises(ConfigError, match=r"duplicate private_ip 127\.0\.1\.12"):
        parse_config(document)


def test_union_error_is_one_line() -> None:
    document = deep_update(node_config_dict(), "hetzner.floating_ips", ["<floating-ipv4-address>/32"])

    with pytest.raises(ConfigError) as raised:
        parse_config(document)

    lines = str(raised.value).splitlines()
    assert lines[0].endswith("(1 problem(s)); fix these keys:")
    assert lines[1:] == [
        "  hetzner.floating_ips.0: Input is not a valid IPv4 interface, or input is not a valid IPv6 interface"
    ]


def test_errors_do_not_show_secrets() -> None:
    document = deep_update(node_config_dict(), "hetzner.token", 12345)
    document = deep_update(document, "galera.password", ["s3cret-password"])

    with pytest.raises(ConfigError) as raised:
        parse_config(document)

    assert "s3cret-password" not in str(raised.value)
    assert "galera.password" in str(raised.value)


def test_secrets_masked_in_repr() -> None:
    config = parse_config(node_config_dict())

    assert "test-token-not-a-secret" not in repr(config)
    assert "test-db-password" not in str(config)


def test_world_readable_file_rejected(tmp_path: Path) -> None:
    path = write_node_config(tmp_path / "node.yaml", node_config_dict())
    path.chmod(0o644)

    with pytest.raises(ConfigError, match="chmod 600"):
        load_config(path)


def test_broken_yaml_names_line(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("cluster: [unclosed\n", encoding="utf-8")
    path.chmod(0o600)

    with pytest.raises(ConfigError, match="line 2"):
        load_config(path)


def test_missing_file_says_how_to_point_elsewhere(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="MAILCOW_HA_CONFIG"):
        load_config(tmp_path / "absent.yaml")
