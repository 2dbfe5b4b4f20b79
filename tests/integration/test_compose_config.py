"""The rendered override merged with a mailcow-shaped compose file by docker-compose 1.29."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.mailcow_checkout import compose_document, write_checkout
from harness.nodeconfig import deep_update, node_config_dict
from mailcow_ha.config import parse_config
from mailcow_ha.render import compose

pytestmark = pytest.mark.integration

DATA_DIR = "/srv/mailcow-data/mailcowdockerized"


def merged_config(checkout: Path) -> dict[str, Any]:
    result = subprocess.run(
        ["docker-compose", "config"], cwd=checkout, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = yaml.safe_load(result.stdout)
    return document


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    directory = write_checkout(tmp_path / "mailcow-dockerized")
    document = deep_update(node_config_dict(), "hetzner.floating_ips", ["203.0.113.10/32", "2001:db8:1::1/64"])
    document = deep_update(document, "mailcow", {"db_password": "galera-side-password"})
    inputs = compose.inputs_from_config(parse_config(document))
    override = compose.render_override(inputs, compose.load_base(directory / "docker-compose.yml"))
    (directory / "docker-compose.override.yml").write_text(compose.dump_override(override))
    return directory


def test_compose_accepts_override(checkout):
    merged = merged_config(checkout)

    assert set(merged["services"]) == set(compose_document()["services"])


def test_stateful_mounts_point_to_shared_volume(checkout):
    merged = merged_config(checkout)

    for name in compose.STATEFUL_VOLUMES:
        assert merged["volumes"][name]["driver_opts"]["device"] == f"{DATA_DIR}/{name}"


def test_no_certificate_mount_on_root_disk(checkout):
    merged = merged_config(checkout)

    for name, service in merged["services"].items():
        for entry in service.get("volumes", []):
            source, target = entry.split(":")[:2]
            if target in ("/etc/ssl/mail", "/var/lib/acme"):
                assert source == f"{DATA_DIR}/ssl", f"{name} mounts {entry}"


def test_database_container_inert_after_merge(checkout):
    service = merged_config(checkout)["services"]["mysql-mailcow"]

    assert service["entrypoint"] == ["/bin/true"]
    assert service["restart"] == "no"


def test_override_credentials_win_over_mailcow_conf(checkout):
    services = merged_config(checkout)["services"]

    for name in compose.database_services(compose_document()):
        assert services[name]["environment"]["DBPASS"] == "galera-side-password", name


def test_snat_replaces_mailcow_default(checkout):
    environment = merged_config(checkout)["services"]["netfilter-mailcow"]["environment"]

    assert environment["SNAT_TO_SOURCE"] == "203.0.113.10"
    assert environment["SNAT6_TO_SOURCE"] == "2001:db8:1::1"


def test_socket_volume_bound_to_host_socket_dir(checkout):
    merged = merged_config(checkout)

    assert merged["volumes"]["mysql-socket-vol-1"]["driver_opts"]["device"] == "/run/mysqld"


def test_compose_rejects_mismatched_certificate_target(checkout):
    override_path = checkout / "docker-compose.override.yml"
    override = yaml.safe_load(override_path.read_text())
    override["services"]["dovecot-mailcow"]["volumes"] = [f"{DATA_DIR}/ssl:/etc/ssl/mail:ro"]
    override_path.write_text(yaml.safe_dump(override))

    result = subprocess.run(
        ["docker-compose", "config"], cwd=checkout, capture_output=True, text=True, timeout=60, check=False
    )

    assert result.returncode != 0
    assert "Duplicate mount points" in result.stderr
