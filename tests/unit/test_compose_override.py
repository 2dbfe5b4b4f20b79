"""The compose override renderer, against the checkout-shaped mailcow compose document."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

import pytest
import yaml

from harness.mailcow_checkout import compose_document
from harness.nodeconfig import deep_update, node_config_dict
from mailcow_ha.config import parse_config
from mailcow_ha.errors import ConfigError
from mailcow_ha.render import compose

DATA_DIR = "/srv/mailcow-data/mailcowdockerized"


def make_inputs(**changes: Any) -> compose.OverrideInputs:
    document = deep_update(node_config_dict(), "hetzner.floating_ips", ["203.0.113.10/32", "2001:db8:1::1/64"])
    document = deep_update(document, "mailcow", {"db_password": "mailcow-db-secret"})
    inputs = compose.inputs_from_config(parse_config(document))
    return compose.OverrideInputs(**{**inputs.__dict__, **changes})


def test_inputs_from_config_reads_floating_ips():
    inputs = make_inputs()

    assert inputs.snat_ipv4 == "203.0.113.10"
    assert inputs.snat_ipv6 == "2001:db8:1::1"
    assert inputs.socket_dir == PurePosixPath("/run/mysqld")
    assert inputs.data_dir == PurePosixPath(DATA_DIR)


def test_stateful_volumes_bound_to_shared_volume():
    override = compose.render_override(make_inputs(), compose_document())

    for name in compose.STATEFUL_VOLUMES:
        options = override["volumes"][name]["driver_opts"]
        assert options == {"type": "none", "o": "bind", "device": f"{DATA_DIR}/{name}"}


def test_socket_volume_bound_to_galera_socket_dir():
    override = compose.render_override(make_inputs(), compose_document())

    assert override["volumes"]["mysql-socket-vol-1"]["driver_opts"]["device"] == "/run/mysqld"


def test_database_container_is_inert():
    service = compose.render_override(make_inputs(), compose_document())["services"]["mysql-mailcow"]

    assert service["entrypoint"] == ["/bin/true"]
    assert service["restart"] == "no"
    assert service["healthcheck"] == {"disable": True}


def test_database_services_found_by_socket_mount():
    names = compose.database_services(compose_document())

    assert names == [
        "acme-mailcow",
        "dovecot-mailcow",
        "php-fpm-mailcow",
        "postfix-mailcow",
        "sogo-mailcow",
        "watchdog-mailcow",
    ]


def test_database_services_get_credentials():
    services = compose.render_override(make_inputs(), compose_document())["services"]

    for name in compose.database_services(compose_document()):
        assert services[name]["environment"] == {
            "DBNAME": "mailcow",
            "DBUSER": "mailcow",
            "DBPASS": "mailcow-db-secret",
        }


def test_password_left_to_mailcow_conf_when_unset():
    services = compose.render_override(make_inputs(db_password=None), compose_document())["services"]

    assert "DBPASS" not in services["dovecot-mailcow"]["environment"]


def test_certificate_mounts_keep_mailcow_targets():
    services = compose.render_override(make_inputs(), compose_document())["services"]

    assert services["dovecot-mailcow"]["volumes"] == [f"{DATA_DIR}/ssl:/etc/ssl/mail/:ro,z"]
    assert services["nginx-mailcow"]["volumes"] == [f"{DATA_DIR}/ssl:/etc/ssl/mail/:ro,z"]
    assert services["acme-mailcow"]["volumes"] == [f"{DATA_DIR}/ssl:/var/lib/acme/:z"]
    assert "volumes" not in services.get("php-fpm-mailcow", {})


def test_snat_uses_floating_ips():
    environment = compose.render_override(make_inputs(), compose_document())["services"]["netfilter-mailcow"][
        "environment"
    ]

    assert environment == {"SNAT_TO_SOURCE": "203.0.113.10", "SNAT6_TO_SOURCE": "2001:db8:1::1"}


def test_snat_ipv6_omitted_without_ipv6_floating_ip():
    services = compose.render_override(make_inputs(snat_ipv6=None), compose_document())["services"]

    assert services["netfilter-mailcow"]["environment"] == {"SNAT_TO_SOURCE": "203.0.113.10"}


def test_override_names_only_existing_services():
    base = compose_document()
    override = compose.render_override(make_inputs(), base)

    assert set(override["services"]) <= set(base["services"])


@pytest.mark.parametrize("volume", ["vmail-vol-1", "mysql-socket-vol-1"])
def test_render_rejects_base_without_volume(volume):
    base = compose_document()
    del base["volumes"][volume]

    with pytest.raises(ConfigError, match=volume):
        compose.render_override(make_inputs(), base)


def test_render_rejects_base_without_netfilter():
    base = compose_document()
    del base["services"]["netfilter-mailcow"]

    with pytest.raises(ConfigError, match="netfilter-mailcow"):
        compose.render_override(make_inputs(), base)


def test_dump_round_trips_with_header():
    override = compose.render_override(make_inputs(), compose_document())
    text = compose.dump_override(override)

    assert text.startswith("# Written by mailcow-ha")
    assert yaml.safe_load(text) == override


@pytest.mark.parametrize(
    ("env_text", "expected_fragment"),
    [
        ("COMPOSE_PROJECT_NAME=mailcowdockerized\n", None),
        ('COMPOSE_PROJECT_NAME="mailcowdockerized"\n', None),
        ("DBNAME=mailcow\n", "sets no COMPOSE_PROJECT_NAME"),
        ("COMPOSE_PROJECT_NAME=mailcow-dockerized\n", "COMPOSE_PROJECT_NAME=mailcow-dockerized but"),
    ],
)
def test_project_name_problem(env_text, expected_fragment):
    problem = compose.project_name_problem(env_text, "mailcowdockerized")

    if expected_fragment is None:
        assert problem is None
    else:
        assert problem is not None
        assert expected_fragment in problem


def test_volume_binding_problems_flags_root_disk_volume():
    inputs = make_inputs()
    inspected = [
        {"Name": "mailcowdockerized_vmail-vol-1", "Options": {}},
        {
            "Name": "mailcowdockerized_redis-vol-1",
            "Options": {"type": "none", "o": "bind", "device": f"{DATA_DIR}/redis-vol-1"},
        },
    ]

    problems = compose.volume_binding_problems(inspected, inputs)

    assert len(problems) == 1
    assert "mailcowdockerized_vmail-vol-1 is bound to the root disk" in problems[0]
    assert "docker volume rm mailcowdockerized_vmail-vol-1" in problems[0]
