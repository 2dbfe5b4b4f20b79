"""The Pulumi program under Pulumi's mocks: resources, options, outputs and validation."""

from __future__ import annotations

import base64
import functools
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.fakecloud.testing import FakeCloudEnv, serve_fake
from mailcow_ha.render.cloudinit import USER_DATA_LIMIT

DRIVER = Path(__file__).with_name("program_driver.py")
TOKEN = "hcloud-token-must-stay-secret"
ALERT_URL = "mailtos://alerts:alert-password-secret@smtp.example.net"
COMMIT = "c" * 40


def ed25519_key(seed: int, comment: str = "admin@example.org") -> str:
    """Return an ed25519 public key line in OpenSSH's format with key bytes derived from `seed`."""
    blob = b"".join(len(part).to_bytes(4, "big") + part for part in (b"ssh-ed25519", bytes([seed]) * 32))
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}"


KEY_ONE = ed25519_key(1, "one@example.org")
KEY_TWO = ed25519_key(2, "two@example.org")
BASE_CONFIG = {
    "mailcow-ha:mailHostname": "mail.example.org",
    "mailcow-ha:runtimeRepository": "https://git.example.org/ops/mailcow-ha.git",
    "mailcow-ha:runtimeRef": COMMIT,
    "mailcow-ha:hcloudToken": TOKEN,
    "mailcow-ha:alertUrls": ALERT_URL,
    "mailcow-ha:sshAllowedCidrs": '["198.51.100.0/24"]',
    "mailcow-ha:adminSshKeys": json.dumps([KEY_ONE]),
}
SECRET_KEYS = ("mailcow-ha:hcloudToken", "mailcow-ha:alertUrls")


def run_request(
    config: dict[str, str], secret_keys: list[str] | tuple[str, ...] = SECRET_KEYS, stack: str = "prod"
) -> dict[str, Any]:
    request = {"stack": stack, "config": config, "secret_keys": list(secret_keys)}
    completed = subprocess.run(
        [sys.executable, str(DRIVER), json.dumps(request)], capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 0, completed.stderr
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def run_program(node_count: int = 3, ipv6: bool = True, **overrides: str) -> dict[str, Any]:
    return _run_program_cached(node_count, ipv6, tuple(sorted(overrides.items())))


@functools.cache
def _run_program_cached(node_count: int, ipv6: bool, overrides: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    config = {**BASE_CONFIG, "mailcow-ha:nodeCount": str(node_count), "mailcow-ha:floatingIpv6": str(ipv6).lower()}
    config.update({f"mailcow-ha:{key}": value for key, value in overrides})
    return run_request(config)


COMMON_RUNS: list[tuple[int, bool, dict[str, str]]] = [
    (3, True, {}),
    (5, True, {}),
    (5, False, {}),
    (9, True, {}),
    (3, True, {"sshAllowedCidrs": "[]"}),
    (3, True, {"adminSshKeys": json.dumps([KEY_ONE, KEY_TWO])}),
    (3, True, {"adminSshKeys": json.dumps([KEY_TWO])}),
]


@pytest.fixture(scope="module", autouse=True)
def prefetch_common_runs() -> None:
    """Run the program for the configurations most tests share in parallel; the tests then read the cache."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(lambda run: run_program(run[0], run[1], **run[2]), COMMON_RUNS))


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
    """User data, image and SSH keys replace a server, a server type powers it off, networks re-address it."""
    for server in resources_of(run_program(), "server:Server"):
        assert set(server["ignore_changes"]) == {"userData", "image", "sshKeys", "serverType", "networks"}


def test_runtime_owned_assignments_ignored() -> None:
    result = run_program()
    assignments = resources_of(result, "floatingIpAssignment:FloatingIpAssignment")
    shared = [item for item in resources_of(result, "volumeAttachment:VolumeAttachment") if "shared" in item["name"]]

    assert len(assignments) == 2
    assert len(shared) == 1
    for resource in [*assignments, *shared]:
        assert resource["ignore_changes"] == ["serverId"], resource["name"]


def test_runtime_owned_assignments_retained() -> None:
    """Deleting these resources must not detach the volume or unassign an IP from the master."""
    result = run_program()
    attachments = resources_of(result, "volumeAttachment:VolumeAttachment")
    runtime_owned = [
        *resources_of(result, "floatingIpAssignment:FloatingIpAssignment"),
        *(item for item in attachments if "shared" in item["name"]),
    ]
    own_volumes = [item for item in attachments if "shared" not in item["name"]]

    for resource in runtime_owned:
        assert resource["retain_on_delete"] is True, resource["name"]
    assert len(own_volumes) == 3
    for resource in own_volumes:
        assert resource["retain_on_delete"] is False, resource["name"]


def test_floating_ips_protected() -> None:
    floating_ips = resources_of(run_program(), "floatingIp:FloatingIp")

    assert len(floating_ips) == 2
    for floating_ip in floating_ips:
        assert floating_ip["protect"] is True, floating_ip["name"]


def test_runtime_moved_resources_ignore_server() -> None:
    """The floating IPs and the shared volume show the master as server_id after a failover."""
    result = run_program()
    shared = [item for item in resources_of(result, "volume:Volume") if "shared" in item["name"]]
    moved = [*resources_of(result, "floatingIp:FloatingIp"), *shared]

    assert len(moved) == 3
    for resource in moved:
        assert resource["ignore_changes"] == ["serverId"], resource["name"]


def test_ssh_keys_named_by_key() -> None:
    """Removing the first key must leave the resource of the second one unchanged."""

    def keys(result: dict[str, Any]) -> dict[str, tuple[str, str]]:
        return {
            item["inputs"]["publicKey"]: (item["name"], item["inputs"]["name"])
            for item in resources_of(result, "sshKey:SshKey")
        }

    both = keys(run_program(adminSshKeys=json.dumps([KEY_ONE, KEY_TWO])))
    second_only = keys(run_program(adminSshKeys=json.dumps([KEY_TWO])))

    assert len(both) == 2
    assert second_only == {KEY_TWO: both[KEY_TWO]}
    assert len({names[1] for names in both.values()}) == 2


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
        assert server["inputs"]["labels"] == {
            "cluster": "mailcow-prod",
            "role": "node",
            "node": str(index),
            "vrrp-router-id": "51",
            "vrrp-advert-int": "1",
        }
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


def plain_strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Yield (path, text) for every string in `value` that is not inside a secret wrapper."""
    if isinstance(value, dict):
        if "__secret__" in value:
            return
        for key, item in value.items():
            yield from plain_strings(item, f"{path}.{key}")
    elif isinstance(value, list):
        for position, item in enumerate(value):
            yield from plain_strings(item, f"{path}[{position}]")
    elif isinstance(value, str):
        yield path, value


def test_secrets_only_inside_secret_values() -> None:
    """No secret reaches a resource input or an output in clear, however deeply nested."""
    secrets = {
        "hcloudToken": TOKEN,
        "alertUrls": ALERT_URL,
        "galeraPassword": "galera-password-must-stay-secret",
        "statusApiSecret": "status-api-secret-must-stay-secret",
    }
    config = {**BASE_CONFIG, **{f"mailcow-ha:{key}": value for key, value in secrets.items()}}
    result = run_request(config, [f"mailcow-ha:{key}" for key in secrets])

    assert "error" not in result, result.get("traceback")
    exposed = [
        (f"{resource['name']}{path}", secret)
        for resource in result["resources"]
        for path, text in plain_strings(resource["inputs"])
        for secret in (TOKEN, "alert-password-secret", "galera-password-must-stay", "status-api-secret-must")
        if secret in text
    ]
    exposed += [
        (f"outputs{path}", secret)
        for path, text in plain_strings(result["outputs"])
        for secret in secrets.values()
        if secret in text
    ]
    assert exposed == []
    user_data = [secret_value(server["inputs"]["userData"]) for server in resources_of(result, "server:Server")]
    assert all("galera-password-must-stay-secret" in text for text in user_data)


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
        ({"networkCidr": "10.0.0.0/25", "subnetCidr": "10.0.0.0/27"}, "networkCidr"),
        ({"adminSshKeys": json.dumps([KEY_ONE, KEY_ONE.replace("one@", "again@")])}, "adminSshKeys"),
        ({"alertUrls": "nosuchservice://hook"}, "alertUrls"),
    ],
)
def test_invalid_config_declares_nothing(overrides: dict[str, str], key: str) -> None:
    result = run_program(3, True, **overrides)

    assert "RunError" in result["error"]
    assert f"mailcow-ha:{key}" in result["error"]
    assert result["resources"] == []


def test_stack_name_invalid_as_cluster_name() -> None:
    result = run_request({**BASE_CONFIG, "mailcow-ha:floatingIpv6": "true"}, stack="Prod_EU")

    assert "mailcow-ha:clusterName: unset, so the cluster name is derived" in result["error"]
    assert result["resources"] == []


def test_plain_key_set_as_secret_rejected() -> None:
    result = run_request(BASE_CONFIG, [*SECRET_KEYS, "mailcow-ha:mailHostname"])

    assert "mailcow-ha:mailHostname: set as a secret, but it is not one" in result["error"]
    assert result["resources"] == []


@pytest.fixture
def fake() -> Iterator[FakeCloudEnv]:
    with serve_fake() as env:
        yield env


def deployed_cluster(env: FakeCloudEnv, count: int, holder: int) -> None:
    """Create the servers, shared volume and floating IPs of a deployed cluster in the fake."""
    network = env.fake.create_network("mailcow-prod-network", "10.0.0.0/16", subnet="10.0.1.0/24")
    ids = [
        env.fake.create_server(
            f"mailcow-prod-{index}",
            labels={"cluster": "mailcow-prod", "role": "node", "node": str(index)},
            network_id=network.id,
            private_ip=f"10.0.1.{10 + index}",
        ).id
        for index in range(1, count + 1)
    ]
    env.fake.create_volume(
        "mailcow-prod-shared-data", server_id=ids[holder - 1], labels={"cluster": "mailcow-prod", "role": "shared-data"}
    )
    for kind in ("ipv4", "ipv6"):
        env.fake.create_floating_ip(
            f"mailcow-prod-{kind}", type=kind, server_id=ids[holder - 1], labels={"cluster": "mailcow-prod"}
        )


def run_against(env: FakeCloudEnv, node_count: int) -> dict[str, Any]:
    config = {
        **BASE_CONFIG,
        "mailcow-ha:nodeCount": str(node_count),
        "mailcow-ha:floatingIpv6": "true",
        "hcloud:token": env.token,
        "hcloud:endpoint": env.url,
    }
    return run_request(config, [*SECRET_KEYS, "hcloud:token"])


def test_scale_in_of_master_rejected(fake: FakeCloudEnv) -> None:
    deployed_cluster(fake, 5, holder=5)

    result = run_against(fake, 3)

    assert "would harm the running cluster mailcow-prod" in result["error"]
    assert "deletes mailcow-prod-5, to which a failover moved the shared data volume" in result["error"]
    assert fake.token not in result["error"]
    assert result["resources"] == []


def test_scale_in_losing_majority_rejected(fake: FakeCloudEnv) -> None:
    deployed_cluster(fake, 7, holder=1)

    result = run_against(fake, 3)

    assert "deletes 4 of 7 Galera members at once" in result["error"]
    assert result["resources"] == []


def test_safe_scale_in_declared(fake: FakeCloudEnv) -> None:
    deployed_cluster(fake, 5, holder=2)

    result = run_against(fake, 3)

    assert "error" not in result, result.get("traceback")
    assert len(resources_of(result, "server:Server")) == 3


def test_renamed_stack_rejected(fake: FakeCloudEnv) -> None:
    """A renamed stack derives another cluster name, and would build a second cluster beside the first."""
    deployed_cluster(fake, 3, holder=1)
    config = {**BASE_CONFIG, "mailcow-ha:floatingIpv6": "true", "hcloud:token": fake.token, "hcloud:endpoint": fake.url}

    result = run_request(config, [*SECRET_KEYS, "hcloud:token"], stack="prod-eu")

    assert "no node of cluster mailcow-prod-eu but nodes of mailcow-prod" in result["error"]
    assert result["resources"] == []


def test_unreachable_api_declares_nothing() -> None:
    config = {**BASE_CONFIG, "hcloud:token": "token", "hcloud:endpoint": "http://127.0.0.1:9/v1"}

    result = run_request(config, [*SECRET_KEYS, "hcloud:token"])

    assert "the change cannot be checked against the running cluster" in result["error"]
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
