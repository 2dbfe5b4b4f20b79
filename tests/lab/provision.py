"""Create the lab's cloud resources in the fake API and read back what the nodes need.

The resources come from the project's own Pulumi program, run under mocks that create each
one in the fake (lab.pulumirun). `CloudLayout` is what the lab builds the nodes from: servers
with their addresses and Galera volumes, the shared volume and the floating IPs, all read from
the fake's state, so the lab uses the ids and addresses the cloud assigned.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lab.cloudapi import CloudControl
from lab.shell import LabError
from mailcow_ha.render.nodeconfig import NODE_CONFIG_PATH
from mailcow_ha.stack import PROJECT, SECRET_KEYS

SHARED_ROLE = "shared-data"
"""The `role` label the Pulumi program gives the shared data volume."""
_TESTS_DIR = Path(__file__).resolve().parent.parent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerLayout:
    """One server as the cloud sees it."""

    id: int
    name: str
    index: int
    public_ip: str
    private_ip: str
    db_volume_id: int


@dataclass(frozen=True)
class CloudLayout:
    """The cloud resources of one lab cluster."""

    servers: tuple[ServerLayout, ...]
    shared_volume_id: int
    floating_ip_ids: tuple[int, ...]
    floating_ips: tuple[str, ...]
    """Addresses with prefix length, as configured on the public interface (`/32` for IPv4)."""

    def server(self, index: int) -> ServerLayout:
        for server in self.servers:
            if server.index == index:
                return server
        raise LabError(f"the cloud has no server with node index {index}")


def pulumi_config(stack_values: Mapping[str, Any]) -> tuple[dict[str, str], list[str]]:
    """Return Pulumi config (`mailcow-ha:` keys, string values) and the secret keys, from stack values."""
    config = {}
    for key, value in stack_values.items():
        text = json.dumps(value) if isinstance(value, list | dict | bool) else str(value)
        config[f"{PROJECT}:{key}"] = text
    secret_keys = [f"{PROJECT}:{key}" for key in sorted(SECRET_KEYS & set(stack_values))]
    return config, secret_keys


def run_program(
    *,
    stack_name: str,
    stack_values: Mapping[str, Any],
    subnet: str,
    namespace: str,
    host: str,
    port: int,
    token_file: Path,
    log_file: Path,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """Run the Pulumi program under mocks that create its resources in the fake; return its result.

    A second run (more nodes) finds the existing resources by name and creates only the new
    ones, as `pulumi up` on an existing stack would.
    """
    config, secret_keys = pulumi_config(stack_values)
    request = {
        "stack": stack_name,
        "config": config,
        "secret_keys": secret_keys,
        "subnet": subnet,
        "namespace": namespace,
        "host": host,
        "port": port,
        "token_file": str(token_file),
    }
    environment = {**os.environ, "PYTHONPATH": f"{_TESTS_DIR}:{_TESTS_DIR.parent / 'infra'}"}
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "lab.pulumirun", json.dumps(request)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=environment,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise LabError(f"the Pulumi program did not finish within {timeout:g} s") from None
    log_file.write_text(completed.stderr, encoding="utf-8")
    try:
        result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        raise LabError(
            f"the Pulumi program run printed no result (exit {completed.returncode}); see {log_file}"
        ) from None
    if "error" in result:
        raise LabError(f"the Pulumi program failed: {result['error']}; see {log_file}")
    return result


def node_documents(result: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Return each server's node config, as its user data writes /etc/mailcow-ha/node.yaml."""
    documents = {}
    for resource in result["resources"]:
        if resource["type"] != "hcloud:index/server:Server":
            continue
        user_data = yaml.safe_load(resource["inputs"]["userData"])
        files = {entry["path"]: entry for entry in user_data.get("write_files", [])}
        entry = files.get(str(NODE_CONFIG_PATH))
        if entry is None:
            raise LabError(f"the user data of {resource['inputs']['name']} writes no {NODE_CONFIG_PATH}")
        documents[resource["inputs"]["name"]] = yaml.safe_load(entry["content"])
    return documents


def read_layout(control: CloudControl, cluster_name: str) -> CloudLayout:
    """Read the cluster's resources from the fake's state."""
    state = control.state()
    servers_by_id: dict[int, dict[str, Any]] = {
        server["id"]: server
        for server in state.get("servers", [])
        if server.get("labels", {}).get("cluster") == cluster_name
    }
    volumes = [volume for volume in state.get("volumes", []) if volume.get("labels", {}).get("cluster") == cluster_name]
    db_volumes = {
        volume["server"]: volume["id"] for volume in volumes if volume.get("labels", {}).get("role") == "galera"
    }
    shared = [volume["id"] for volume in volumes if volume.get("labels", {}).get("role") == SHARED_ROLE]
    if len(shared) != 1:
        raise LabError(f"expected one volume labelled cluster={cluster_name},role={SHARED_ROLE}, found {len(shared)}")
    servers = []
    for server_id, server in sorted(servers_by_id.items()):
        name = server["name"]
        index = int(server["labels"]["node"])
        private = server.get("private_net") or []
        if not private:
            raise LabError(f"server {name} has no private network attachment")
        if server_id not in db_volumes:
            raise LabError(f"server {name} has no Galera volume attached")
        servers.append(
            ServerLayout(
                server_id, name, index, str(server["public_ipv4"]), str(private[0]["ip"]), db_volumes[server_id]
            )
        )
    floating = [fip for fip in state.get("floating_ips", []) if fip.get("labels", {}).get("cluster") == cluster_name]
    addresses = []
    for fip in floating:
        if fip["type"] == "ipv4":
            addresses.append(f"{ipaddress.IPv4Address(fip['ip'].split('/')[0])}/32")
        else:
            network = ipaddress.IPv6Network(fip["ip"], strict=False)
            addresses.append(f"{network.network_address + 1}/{network.prefixlen}")
    return CloudLayout(
        tuple(sorted(servers, key=lambda server: server.index)),
        shared[0],
        tuple(fip["id"] for fip in floating),
        tuple(addresses),
    )
