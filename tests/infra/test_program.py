"""The Pulumi program under Pulumi's mocks: resources, options, outputs and validation."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailcow_ha.render.cloudinit import USER_DATA_LIMIT

DRIVER = Path(__file__).with_name("program_driver.py")
TOKEN = "hcloud-token-must-stay-secret"
ALERT_URL = "mailtos://alerts:alert-password-secret@smtp.example.net"
COMMIT = "c" * 40
BASE_CONFIG = {
    "mailcow-ha:mailHostname": "mail.example.org",
    "mailcow-ha:runtimeRepository": "https://git.example.org/ops/mailcow-ha.git",
    "mailcow-ha:runtimeRef": COMMIT,
    "mailcow-ha:hcloudToken": TOKEN,
    "mailcow-ha:alertUrls": ALERT_URL,
    "mailcow-ha:sshAllowedCidrs": '["198.51.100.0/24"]',
    "mailcow-ha:adminSshKeys": '["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKeyForTests admin@example.org"]',
}
SECRET_KEYS = ("mailcow-ha:hcloudToken", "mailcow-ha:alertUrls")


@functools.cache
def run_program(node_count: int = 3, ipv6: bool = True, **overrides: str) -> dict[str, Any]:
    config = {**BASE_CONFIG, "mailcow-ha:nodeCount": str(node_count), "mailcow-ha:floatingIpv6": str(ipv6).lower()}
    config.update({f"mailcow-ha:{key}": value for key, value in overrides.items()})
    request = {"stack": "prod", "config": config, "secret_keys": list(SECRET_KEYS)}
    completed = subprocess.run(
        [sys.executable, str(DRIVER), json.dumps(request)], capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 0, completed.stderr
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def resources_of(result: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [resource for resource in result["resources"] if resource["type"] == f"hcloud:index/{kind}"]


def secret_value(value: Any) -> Any:
    assert isinstance(value, dict)
    assert "__secret__" in value
    return value["__secret__"]


@pytest.mark.parametrize(("node_count", "ipv6"), [(3, True), (5, False), (9, True)])
def test_resource_counts(node_count: int, ipv6: bool) -> None:
    result = run_program(node_count, ipv6)

    assert "error" not in result, result.get("traceback")
    counts = Counter(resource["type"].split(":")[-1] for resource in result["resources"])
    floating = 2 if ipv6 else 1
    assert counts["Server"] == node_count
    assert counts["Volume"] == node_count + 1
    assert counts["VolumeAttachment"] == node_count + 1
    assert counts["FloatingIp"] == floating
    assert counts["FloatingIpAssignment"] == floating
    assert counts["Rdns"] == floating
    assert counts["Network"] == 1
    assert counts["NetworkSubnet"] == 1
    assert counts["PlacementGroup"] == 1
    assert counts["Firewall"] == 1
    assert counts["SshKey"] == 1
    assert counts["Cluster"] == 1


def test_children_parented_to_component() -> None:
    result = run_program()
    component = next(item for item in result["resources"] if item["type"] == "mailcow-ha:index:Cluster")

    for resource in result["resources"]:
        if resource is not component:
            assert resource["parent"] == component["urn"], resource["name"]
            assert resource["name"].startswith(component["name"] + "-"), resource["name"]


def test_servers_ignore_replacing_changes() -> None:
    for server in resources_of(run_program(), "server:Server"):
        assert set(server["ignore_changes"]) == {"userData", "image", "sshKeys"}


def test_runtime_owned_assignments_ignored() -> None:
    result = run_program()
    assignments = resources_of(result, "floatingIpAssignment:FloatingIpAssignment")
    shared = [item for item in resources_of(result, "volumeAttachment:VolumeAttachment") if "shared" in item["name"]]

    assert len(shared) == 1
    for resource in [*assignments, *shared]:
        assert resource["ignore_changes"] == ["serverId"], resource["name"]


def test_first_node_gets_shared_volume_and_ips() -> None:
    result = run_program()
    servers = {item["inputs"]["name"]: item["id"] for item in resources_of(result, "server:Server")}
    first = float(servers["mailcow-prod-1"])
    shared = next(
        item for item in resources_of(result, "volumeAttachment:VolumeAttachment") if "shared" in item["name"]
    )

    assert shared["inputs"]["serverId"] == first
    for assignment in resources_of(result, "floatingIpAssignment:FloatingIpAssignment"):
        assert assignment["inputs"]["serverId"] == first


def test_db_volumes_attached_to_own_node() -> None:
    result = run_program(5)
    servers = {item["name"].rsplit("-", 1)[-1]: float(item["id"]) for item in resources_of(result, "server:Server")}
    volumes = {item["id"]: item for item in resources_of(result, "volume:Volume")}

    for attachment in resources_of(result, "volumeAttachment:VolumeAttachment"):
        if "shared" in attachment["name"]:
            continue
        index = attachment["name"].split("-db-")[1].split("-")[0]
        volume = volumes[str(int(attachment["inputs"]["volumeId"]))]
        assert attachment["inputs"]["serverId"] == servers[index]
        assert volume["inputs"]["format"] == "ext4"
        assert volume["inputs"]["automount"] is False
        assert volume["inputs"]["size"] == 20


def test_shared_volume_protected_and_unattached() -> None:
    shared = next(item for item in resources_of(run_program(), "volume:Volume") if "shared" in item["name"])

    assert shared["protect"] is True
    assert "serverId" not in shared["inputs"]
    assert shared["inputs"]["format"] == "ext4"
    assert shared["inputs"]["size"] == 100


def test_servers_have_labels_and_static_ips() -> None:
    servers = resources_of(run_program(5), "server:Server")

    for server in servers:
        index = int(server["inputs"]["labels"]["node"])
        assert server["inputs"]["labels"] == {"cluster": "mailcow-prod", "role": "node", "node": str(index)}
        assert server["inputs"]["networks"][0]["ip"] == f"10.0.1.{10 + index}"
        assert server["inputs"]["location"] == "fsn1"
        assert "placementGroupId" in server["inputs"]


def test_user_data_secret_and_small() -> None:
    for server in resources_of(run_program(), "server:Server"):
        user_data = secret_value(server["inputs"]["userData"])
        document = yaml.safe_load(user_data)

        assert user_data.startswith("#cloud-config\n")
        assert len(user_data.encode()) <= USER_DATA_LIMIT
        assert document["hostname"] == server["inputs"]["name"]
        assert TOKEN in user_data


def test_user_data_stable_under_scale_out() -> None:
    def user_data(result: dict[str, Any]) -> dict[str, str]:
        return {
            item["inputs"]["name"]: secret_value(item["inputs"]["userData"])
            for item in resources_of(result, "server:Server")
        }

    three = user_data(run_program(3))
    five = user_data(run_program(5))

    for name, text in three.items():
        assert five[name] == text, name


def test_firewall_rules() -> None:
    firewall = resources_of(run_program(), "firewall:Firewall")[0]
    rules = firewall["inputs"]["rules"]
    tcp_ports = sorted(int(rule["port"]) for rule in rules if rule["protocol"] == "tcp")
    ssh = [rule for rule in rules if rule.get("port") == "22"]

    assert tcp_ports == sorted([25, 465, 587, 143, 993, 110, 995, 4190, 80, 443, 22])
    assert ssh[0]["sourceIps"] == ["198.51.100.0/24"]
    assert any(rule["protocol"] == "icmp" for rule in rules)
    assert all(rule["direction"] == "in" for rule in rules)


def test_ssh_closed_without_admin_cidrs() -> None:
    rules = resources_of(run_program(sshAllowedCidrs="[]"), "firewall:Firewall")[0]["inputs"]["rules"]

    assert all(rule.get("port") != "22" for rule in rules)


def test_reverse_dns_set_to_hostname() -> None:
    records = resources_of(run_program(), "rdns:Rdns")

    assert {record["inputs"]["dnsPtr"] for record in records} == {"mail.example.org"}
    assert {record["inputs"]["ipAddress"] for record in records} == {"203.0.113.10", "2001:db8:10::1"}


def test_outputs_present() -> None:
    outputs = run_program(5)["outputs"]

    assert outputs["mailHostname"] == "mail.example.org"
    assert outputs["floatingIpv4"] == "203.0.113.10"
    assert outputs["floatingIpv6"] == "2001:db8:10::1"
    assert outputs["sharedVolumeId"]
    assert [node["name"] for node in outputs["nodes"]] == [f"mailcow-prod-{index}" for index in range(1, 6)]
    for node in outputs["nodes"]:
        assert node["publicIpv4"].startswith("198.51.100.")
        assert node["privateIp"] == f"10.0.1.{10 + node['index']}"
        assert node["dbVolumeId"]
    kinds = Counter(target["kind"] for target in outputs["monitoringTargets"])
    assert kinds["ping"] == 5
    assert kinds["tcp"] == 5
    assert kinds["http"] == 1
    for target in outputs["monitoringTargets"]:
        assert set(target) == {"name", "kind", "host", "port"}


def test_outputs_free_of_secrets() -> None:
    result = run_program()
    text = json.dumps(result["outputs"])
    generated = [item["inputs"]["result"] for item in result["resources"] if item["type"].startswith("random:")]

    assert "__secret__" not in text
    assert TOKEN not in text
    assert "alert-password-secret" not in text
    assert len(generated) == 2
    for password in generated:
        assert password not in text


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"nodeCount": "4"}, "nodeCount"),
        ({"location": "mars1"}, "location"),
        ({"sharedVolumeSize": "5"}, "sharedVolumeSize"),
    ],
)
def test_invalid_config_declares_nothing(overrides: dict[str, str], key: str) -> None:
    result = run_program(**overrides)

    assert "RunError" in result["error"]
    assert f"mailcow-ha:{key}" in result["error"]
    assert result["resources"] == []


def test_plain_token_rejected_before_resources() -> None:
    config = dict(BASE_CONFIG)
    request = {"stack": "prod", "config": config, "secret_keys": ["mailcow-ha:alertUrls"]}
    completed = subprocess.run(
        [sys.executable, str(DRIVER), json.dumps(request)], capture_output=True, text=True, timeout=120, check=False
    )
    result = json.loads(completed.stdout.strip().splitlines()[-1])

    assert "mailcow-ha:hcloudToken: given as plain text" in result["error"]
    assert TOKEN not in result["error"]
    assert result["resources"] == []
