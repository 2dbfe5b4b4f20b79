"""The lab's stack config and each node's config file, built by the project's own renderers.

A node's config starts as the document the Pulumi program puts into the node's user data
(`mailcow_ha.render.nodeconfig.node_config_document`). The lab then changes only what a lab
must: where the node's files, sockets and devices are, the cloud API endpoint, the peers and
server id that the first peer sync would fill in, and shorter timeouts so scenarios run fast.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mailcow_ha.config import parse_config
from mailcow_ha.stack import SECRET_KEYS, StackConfig, parse_stack

STACK_NAME = "lab"
CLUSTER_NAME = "mailcow-lab"
PROJECT_NAME = "mailcowdockerized"
CRITICAL_SERVICES = ("postfix-mailcow", "dovecot-mailcow", "redis-mailcow")
"""The lab's stand-ins of mailcow's critical containers (see lab.engine)."""


@dataclass(frozen=True)
class LabSecrets:
    """The lab stack's secrets, random per lab."""

    hcloud_token: str
    galera_password: str
    status_api_secret: str


def stack_values(node_count: int, secrets: LabSecrets, *, advert_interval: int = 1) -> dict[str, Any]:
    """Return the stack config values (`mailcow-ha:` keys without the prefix) of a lab."""
    return {
        "clusterName": CLUSTER_NAME,
        "nodeCount": node_count,
        "location": "fsn1",
        "serverType": "cx32",
        "networkCidr": "10.0.0.0/16",
        "subnetCidr": "10.0.1.0/24",
        "sharedVolumeSize": 10,
        "dbVolumeSize": 10,
        "mailHostname": "mail.lab.example",
        "advertInterval": advert_interval,
        "hcloudToken": secrets.hcloud_token,
        "galeraPassword": secrets.galera_password,
        "statusApiSecret": secrets.status_api_secret,
        "runtimeRepository": "https://git.example/mailcow-ha.git",
        "runtimeRef": "0" * 40,
    }


def lab_stack(node_count: int, secrets: LabSecrets) -> StackConfig:
    values = stack_values(node_count, secrets)
    return parse_stack(values, SECRET_KEYS & set(values), stack=STACK_NAME)


@dataclass(frozen=True)
class LabNodePaths:
    """Where one node's files are on the host; the node's /run is a tmpfs of its own."""

    node_dir: Path

    @property
    def config_file(self) -> Path:
        return self.node_dir / "node.yaml"

    @property
    def device_dir(self) -> Path:
        return self.node_dir / "dev" / "disk" / "by-id"

    @property
    def mount_point(self) -> Path:
        return self.node_dir / "mnt" / "mailcow-data"

    @property
    def project_dir(self) -> Path:
        return self.node_dir / "mailcow-dockerized"

    @property
    def state_dir(self) -> Path:
        return self.node_dir / "state"

    @property
    def docker_socket(self) -> str:
        return f"unix://{self.node_dir / 'podman' / 'podman.sock'}"

    @property
    def keepalived_conf(self) -> Path:
        return self.node_dir / "keepalived.conf"

    @property
    def galera_conf(self) -> Path:
        return self.node_dir / "galera.cnf"

    @property
    def galera_data_dir(self) -> Path:
        return self.node_dir / "mysql"

    @property
    def mariadb_start(self) -> Path:
        """The node's stand-in for `systemctl start mariadb` (see lab.database)."""
        return self.node_dir / "bin" / "mariadb-start"


def lab_node_config(
    rendered: Mapping[str, Any],
    *,
    paths: LabNodePaths,
    endpoint: str,
    server_id: int,
    peers: Sequence[Mapping[str, Any]],
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Return a node's config document: the one from its user data, with the lab's paths and timings."""
    document = copy.deepcopy(dict(rendered))
    index = document["node"]["index"]
    document["peers"] = [dict(peer) for peer in peers]
    document["hetzner"].update(
        {
            "endpoint": endpoint,
            "server_id": server_id,
            "request_timeout": 5.0,
            "connect_timeout": 1.0,
            "poll_interval": 0.1,
        }
    )
    document["mailcow"] = {
        "project_dir": str(paths.project_dir),
        "project_name": PROJECT_NAME,
        "critical_services": list(CRITICAL_SERVICES),
    }
    document["paths"] = {
        "device_dir": str(paths.device_dir),
        "mount_point": str(paths.mount_point),
        "docker_socket": paths.docker_socket,
        "state_dir": str(paths.state_dir),
        "keepalived_conf": str(paths.keepalived_conf),
        "galera_conf": str(paths.galera_conf),
    }
    document["deadlines"] = {
        "cloud_step": 20.0,
        "device": 10.0,
        "containers_healthy": 30.0,
        "containers_stop": 10.0,
        "holders_term": 2.0,
    }
    document["membership"] = {"sync_interval": 10.0}
    # Scenarios share one lab, so a production repeat interval (10 min) would let one scenario's
    # alerts suppress the next scenario's; 15 s is shorter than any scenario's restore.
    document["alerts"] = {**document.get("alerts", {}), "repeat_interval": 15.0}
    document["health"] = {
        "interval": 0.5,
        "probe_timeout": 3.0,
        "failures_to_unhealthy": 2,
        "successes_to_healthy": 2,
        "grace_period": 30.0,
    }
    # keepalived in a network namespace gets no process events from the kernel, so the lab's
    # nodes leave track_process out (the agent's guardian covers a hung agent instead).
    document["keepalived"].update({"agent_process": None})
    document["galera"].update(
        {
            "buffer_pool_size": "16M",
            "gcache_size": "16M",
            "data_dir": str(paths.galera_data_dir),
            "defaults_file": str(paths.galera_conf),
            "start_command": [str(paths.mariadb_start)],
            "bootstrap_command": [str(paths.mariadb_start), "--wsrep-new-cluster"],
            "start_timeout": 60.0,
        }
    )
    for section, values in (overrides or {}).items():
        document.setdefault(section, {}).update(copy.deepcopy(dict(values)))
    parse_config(document, source=f"lab node config of node {index}")
    return document


def write_node_config(paths: LabNodePaths, document: Mapping[str, Any]) -> Path:
    """Write the node config with mode 0600, as cloud-init writes /etc/mailcow-ha/node.yaml."""
    paths.node_dir.mkdir(parents=True, exist_ok=True)
    partial = paths.config_file.with_suffix(".tmp")
    partial.write_text(yaml.safe_dump(dict(document), sort_keys=False), encoding="utf-8")
    partial.chmod(0o600)
    partial.replace(paths.config_file)
    return paths.config_file
