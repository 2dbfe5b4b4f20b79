"""Build valid node config documents for tests, with any key overridden."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml


def node_config_dict(**overrides: Any) -> dict[str, Any]:
    """Return a complete, valid node config for node 1 of a 3-node cluster.

    The node and its peers have loopback addresses (127.0.1.11-13), so a test that happens to
    contact them reaches this host only, where nothing listens unless the test started it.
    Keyword arguments replace top-level sections wholesale; use `deep_update` for single keys.
    """
    document: dict[str, Any] = {
        "cluster": "mailcow-ha-test",
        "node": {"name": "mailcow-ha-test-1", "index": 1, "private_ip": "127.0.1.11"},
        "peers": [
            {"name": f"mailcow-ha-test-{index}", "index": index, "private_ip": f"127.0.1.{10 + index}"}
            for index in (1, 2, 3)
        ],
        "hetzner": {
            "token": "test-token-not-a-secret",
            "endpoint": "http://127.0.0.1:8999/v1",
            "server_id": 101,
            "floating_ip_ids": [201],
            "floating_ips": ["203.0.113.10/32"],
            "shared_volume_id": 301,
        },
        "galera": {"password": "test-db-password", "cluster_name": "mailcow-ha-test"},
        "status_api": {"secret": "test-cluster-secret"},
        "keepalived": {"priority": 250},
    }
    document.update(copy.deepcopy(overrides))
    return document


def deep_update(document: dict[str, Any], dotted_key: str, value: Any) -> dict[str, Any]:
    """Set one key given as `section.key` in a copy of `document` and return the copy."""
    result = copy.deepcopy(document)
    *parents, last = dotted_key.split(".")
    target = result
    for part in parents:
        target = target.setdefault(part, {})
    target[last] = value
    return result


def write_node_config(path: Path, document: dict[str, Any]) -> Path:
    """Write a node config with the 0600 mode the loader requires."""
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    path.chmod(0o600)
    return path
