"""Build each node's config document, and the keepalived and Galera inputs it implies.

The node config written by cloud-init carries only what is fixed when the server is created:
no peer list and no server id, so that scaling out never changes an existing node's user data.
`keepalived_inputs` and `galera_inputs` turn a node config plus the members known at a peer sync
into renderer inputs. `mailcow-ha peers sync` on the node and `mailcow-ha render` offline both
use them, so the reviewed files are the ones a node writes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailcow_ha.config import NodeConfig
from mailcow_ha.render.galera import GaleraInputs
from mailcow_ha.render.keepalived import KeepalivedInputs, priority_for_index
from mailcow_ha.stack import StackConfig

NODE_CONFIG_PATH = Path("/etc/mailcow-ha/node.yaml")
GALERA_CONF_PATH = Path("/etc/mysql/mariadb.conf.d/99-mailcow-ha-galera.cnf")
"""Not Debian's own 60-galera.cnf, which the mariadb-server package owns and may replace."""
STATUS_API_PORT = 8741


@dataclass(frozen=True)
class CloudIds:
    """Ids and addresses the cloud assigns before the servers exist; strings offline (placeholders)."""

    floating_ip_ids: Sequence[int | str]
    floating_ips: Sequence[str]
    """Addresses with prefix length, as configured on the public interface."""
    shared_volume_id: int | str
    db_volume_id: int | str


@dataclass(frozen=True)
class NodeSecrets:
    """Secret values for the node config; placeholders offline."""

    hcloud_token: str
    galera_password: str
    status_api_secret: str
    alert_urls: Sequence[str] = ()


def floating_ip_interface(address: str) -> str:
    """Return how a floating IP is configured on the interface: IPv4 as /32, IPv6 as `<net>::1/64`.

    Hetzner assigns a floating IPv6 as a /64 network; the node uses its first address.
    """
    if "/" in address or ":" in address:
        network = ipaddress.ip_network(address if "/" in address else f"{address}/64", strict=False)
        if isinstance(network, ipaddress.IPv6Network):
            return f"{network.network_address + 1}/{network.prefixlen}"
    return f"{ipaddress.IPv4Address(address)}/32"


def volume_device(volume_id: int | str) -> Path:
    """Return the by-id path under which Hetzner volume `volume_id` appears on its server."""
    return Path("/dev/disk/by-id") / f"scsi-0HC_Volume_{volume_id}"


def node_config_document(stack: StackConfig, index: int, cloud: CloudIds, secrets: NodeSecrets) -> dict[str, Any]:
    """Return the node config of node `index` as a plain document for YAML."""
    return {
        "cluster": stack.cluster_name,
        "node": {
            "name": stack.node_name(index),
            "index": index,
            "private_ip": str(stack.private_ip(index)),
            "private_interface": stack.private_interface,
            "public_interface": stack.public_interface,
        },
        "peers": [],
        "hetzner": {
            "token": secrets.hcloud_token,
            "floating_ip_ids": list(cloud.floating_ip_ids),
            "floating_ips": list(cloud.floating_ips),
            "shared_volume_id": cloud.shared_volume_id,
        },
        "paths": {"galera_conf": str(GALERA_CONF_PATH)},
        "breaker": {"window": stack.breaker_window},
        "alerts": {"urls": list(secrets.alert_urls)},
        "galera": {"password": secrets.galera_password, "cluster_name": stack.cluster_name},
        "status_api": {"port": STATUS_API_PORT, "secret": secrets.status_api_secret},
        "keepalived": {
            "priority": priority_for_index(index),
            "advert_int": stack.advert_interval,
            "virtual_router_id": stack.virtual_router_id,
        },
    }


def keepalived_inputs(config: NodeConfig, peer_addresses: Sequence[str]) -> KeepalivedInputs:
    """Return the keepalived inputs of this node with the given members' private addresses."""
    settings = config.keepalived
    return KeepalivedInputs(
        router_id=config.node.name,
        interface=config.node.private_interface,
        unicast_src_ip=str(config.node.private_ip),
        peers=tuple(peer_addresses),
        priority=settings.priority,
        notify_fifo=config.paths.keepalived_fifo,
        health_file=config.paths.health_file,
        instance=settings.instance,
        virtual_router_id=settings.virtual_router_id,
        advert_int=settings.advert_int,
        script_user=settings.script_user,
        script_group=settings.script_group,
        agent_process=settings.agent_process,
        agent_delay=settings.agent_restart_delay,
    )


def galera_inputs(config: NodeConfig, peer_addresses: Sequence[str]) -> GaleraInputs:
    """Return the Galera inputs of this node with the given members' private addresses."""
    return GaleraInputs(
        cluster_name=config.galera.cluster_name,
        node_name=config.node.name,
        node_address=str(config.node.private_ip),
        peer_addresses=tuple(peer_addresses),
        data_dir=config.galera.data_dir,
        socket=config.galera.socket,
        buffer_pool_size=config.galera.buffer_pool_size,
        gcache_size=config.galera.gcache_size,
    )
