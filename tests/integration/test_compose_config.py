"""The rendered override merged with a mailcow-shaped compose file by docker-compose 1.29."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.mailcow_checkout import compose_document, write_checkout
from harness.nodeconfig import deep_update, node_config_dict, write_node_config
from mailcow_ha.cli import main
from mailcow_ha.config import parse_config
from mailcow_ha.errors import ExitCode
from mailcow_ha.mailcow import upgrade
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


def git(directory: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(directory), "-c", "user.name=test", "-c", "user.email=test@example.org", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.strip()


def node_config_file(tmp_path: Path, project_dir: Path) -> Path:
    document = deep_update(node_config_dict(), "mailcow", {"project_dir": str(project_dir), "pull_command": ["true"]})
    return write_node_config(tmp_path / "node.yaml", document)


def test_cli_writes_private_override(tmp_path):
    directory = write_checkout(tmp_path / "mailcow-dockerized")
    config = node_config_file(tmp_path, directory)

    assert main(["--config", str(config), "compose-override"]) == ExitCode.OK

    override = directory / "docker-compose.override.yml"
    assert oct(override.stat().st_mode & 0o777) == oct(0o600)
    assert merged_config(directory)["services"]["mysql-mailcow"]["restart"] == "no"


def test_cli_rejects_other_project_name(tmp_path, capsys):
    directory = write_checkout(tmp_path / "mailcow-dockerized", project_name="mailcow-dockerized")
    config = node_config_file(tmp_path, directory)

    assert main(["--config", str(config), "compose-override"]) == ExitCode.CONFIG
    assert "COMPOSE_PROJECT_NAME=mailcow-dockerized but" in capsys.readouterr().err
    assert not (directory / "docker-compose.override.yml").exists()


def test_standby_checks_out_master_commit(tmp_path):
    origin = write_checkout(tmp_path / "origin")
    git(origin, "init", "-q")
    git(origin, "add", "-A")
    git(origin, "commit", "-q", "-m", "mailcow 1")
    standby = tmp_path / "standby"
    subprocess.run(["git", "clone", "-q", str(origin), str(standby)], check=True, timeout=60)
    (standby / "mailcow.conf").write_text((origin / "mailcow.conf").read_text())
    document = yaml.safe_load((origin / "docker-compose.yml").read_text())
    document["volumes"]["new-cache-vol-1"] = None
    (origin / "docker-compose.yml").write_text(yaml.safe_dump(document))
    git(origin, "commit", "-q", "-am", "mailcow 2")
    commit = git(origin, "rev-parse", "HEAD")
    config = parse_config(yaml.safe_load(node_config_file(tmp_path, standby).read_text()))

    result = upgrade.checkout_mailcow(config, commit)

    assert result == {"node": "mailcow-ha-test-1", "commit": commit}
    assert git(standby, "rev-parse", "HEAD") == commit
    assert "new-cache-vol-1" in merged_config(standby)["volumes"]
    assert oct((standby / "docker-compose.override.yml").stat().st_mode & 0o777) == oct(0o600)


def test_dollar_in_password_survives_interpolation(tmp_path):
    directory = write_checkout(tmp_path / "mailcow-dockerized")
    password = "Pa$word$$x${HOME}"
    document = deep_update(node_config_dict(), "mailcow", {"db_password": password})
    inputs = compose.inputs_from_config(parse_config(document))
    override = compose.render_override(inputs, compose.load_base(directory / "docker-compose.yml"))
    (directory / "docker-compose.override.yml").write_text(compose.dump_override(override))

    services = merged_config(directory)["services"]

    # `config` prints the merged file in compose syntax, so a literal `$` comes out as `$$`.
    for name in compose.database_services(compose_document()):
        assert services[name]["environment"]["DBPASS"].replace("$$", "$") == password, name
