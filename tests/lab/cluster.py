"""The lab as a whole: bring a cluster up from nothing, find it again, take it down.

A lab lives in one directory (`$MAILCOW_HA_LAB_ROOT/<lab id>`, default /var/tmp/mailcow-ha-lab)
with its manifest, its description (lab.json), the fake cloud's state, volume images, and
every node's files and logs. Every namespace, and so every interface and address, is private
to the lab. Names start with the lab id, so labs of concurrent test runs never meet.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from lab import labcloud
from lab.cloudapi import CloudControl
from lab.engine import build_image_tar
from lab.labcloud import CLOUD_PORT
from lab.labnode import RUNTIME_BIN, LabNode
from lab.manifest import Manifest, remove_all
from lab.node import NodeMachine
from lab.nodeconfig import CLUSTER_NAME, LabNodePaths, LabSecrets, lab_node_config, lab_stack
from lab.observe import (
    LabView,
    floating_ip_routes,
)
from lab.provision import CloudLayout, read_layout
from lab.shell import LabError
from lab.topology import CLOUD_ADDRESS, LabNetwork, NodeNetwork
from lab.volumes import read_mmp_node_name

log = logging.getLogger(__name__)

ROOT_ENV = "MAILCOW_HA_LAB_ROOT"
DEFAULT_ROOT = Path("/var/tmp/mailcow-ha-lab")
DESCRIPTION_FILE = "lab.json"


_Item = TypeVar("_Item")


def lab_root() -> Path:
    return Path(os.environ.get(ROOT_ENV, str(DEFAULT_ROOT)))


def run_parallel(
    what: str,
    action: Callable[[_Item], object],
    items: Sequence[_Item],
    *,
    cancel: threading.Event,
    describe: Callable[[_Item], str] = str,
) -> None:
    """Run `action` on every item in its own thread and return once every thread has ended.

    The first failure sets `cancel`, which the actions' waits poll, so that the other threads
    end early instead of waiting out their own timeouts. No thread outlives this call, even
    when the caller is interrupted, so none logs after a failed lab setup was torn down.
    Raises LabError naming every item that failed.
    """
    errors: list[str] = []
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(items)), thread_name_prefix=f"lab-{what}")
    try:
        futures = {pool.submit(action, item): item for item in items}
        for future in concurrent.futures.as_completed(futures):
            error = future.exception()
            if error is None:
                continue
            cancel.set()
            if not isinstance(error, LabError | OSError):
                raise error
            errors.append(f"{describe(futures[future])}: {error}")
    except BaseException:
        cancel.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if errors:
        raise LabError(f"{what} failed on {len(errors)} node(s): " + "; ".join(sorted(errors)))


@dataclass
class LabOptions:
    """What kind of lab `up` builds."""

    nodes: int = 3
    action_latency: float = 0.0
    """Seconds every cloud action (attach, detach, assign) runs in the fake."""
    config_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Node config keys to change on every node, by section (for example breaker.window)."""


class Lab:
    """One lab cluster and everything it created."""

    def __init__(self, lab_dir: Path, lab_id: str, options: LabOptions, lab_secrets: LabSecrets) -> None:
        self.lab_dir = lab_dir
        self.lab_id = lab_id
        self.options = options
        self.secrets = lab_secrets
        self.manifest = Manifest(lab_dir)
        self.network = LabNetwork(lab_id, self.manifest, "10.0.1.0/24")
        self.stack = lab_stack(options.nodes, lab_secrets)
        self.nodes: dict[int, LabNode] = {}
        self.layout: CloudLayout | None = None
        self.timings: dict[str, float] = {}
        self._control: CloudControl | None = None
        self.cancel = threading.Event()
        """Set when a parallel step failed or the lab goes down; boot's waits stop when it is set."""

    # --- finding labs ------------------------------------------------------------------------

    @classmethod
    def create(cls, options: LabOptions, root: Path | None = None) -> Lab:
        """Make a new, empty lab directory with a fresh id."""
        lab_id = "mhl" + secrets.token_hex(3)
        lab_dir = (root or lab_root()) / lab_id
        # Traversable (not listable) by others: mariadbd runs as mysql and reads its node directory.
        lab_dir.mkdir(parents=True, mode=0o711)
        lab_secrets = LabSecrets(secrets.token_hex(16), secrets.token_hex(12), secrets.token_hex(16))
        lab = cls(lab_dir, lab_id, options, lab_secrets)
        lab.manifest.record("directory", str(lab_dir))
        lab.save()
        return lab

    @classmethod
    def open(cls, lab_dir: Path) -> Lab:
        """Find a lab that an earlier process brought up, from its lab.json."""
        # The real path, so that paths derived from it match what the kernel reports (loop devices).
        lab_dir = lab_dir.resolve()
        try:
            description = json.loads((lab_dir / DESCRIPTION_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LabError(f"no lab in {lab_dir} ({DESCRIPTION_FILE} not found)") from None
        options = LabOptions(
            nodes=description["nodes"],
            action_latency=description["action_latency"],
            config_overrides=description.get("config_overrides", {}),
        )
        lab = cls(lab_dir, description["lab_id"], options, LabSecrets(**description["secrets"]))
        if description.get("cloud_ready"):
            lab.layout = read_layout(lab.control, CLUSTER_NAME)
            for server in lab.layout.servers:
                lab.nodes[server.index] = lab._make_node(server, lab.layout)
                lab.nodes[server.index].machine.adopt()
        return lab

    def save(self, **extra: Any) -> None:
        """Write lab.json (mode 0600: it contains the lab's random secrets)."""
        path = self.lab_dir / DESCRIPTION_FILE
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            previous = {}
        description = {
            **previous,
            "lab_id": self.lab_id,
            "nodes": self.options.nodes,
            "action_latency": self.options.action_latency,
            "config_overrides": self.options.config_overrides,
            "secrets": {
                "hcloud_token": self.secrets.hcloud_token,
                "galera_password": self.secrets.galera_password,
                "status_api_secret": self.secrets.status_api_secret,
            },
            **extra,
        }
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps(description, indent=2), encoding="utf-8")
        partial.chmod(0o600)
        partial.replace(path)

    # --- the cloud ---------------------------------------------------------------------------

    @property
    def control(self) -> CloudControl:
        if self._control is None:
            self._control = CloudControl(self.network.cloud_ns, CLOUD_ADDRESS, CLOUD_PORT, self.secrets.hcloud_token)
        return self._control

    @property
    def endpoint(self) -> str:
        return f"http://{CLOUD_ADDRESS}:{CLOUD_PORT}/v1"

    def start_cloud(self, timeout: float = 20.0) -> None:
        """Start the fake cloud API with its hooks in the cloud namespace (see lab.labcloud)."""
        labcloud.start_cloud(self, timeout)

    def provision(self) -> None:
        """Run the Pulumi program for `options.nodes` nodes and keep each node's rendered config."""
        labcloud.provision(self)

    def rendered_documents(self) -> dict[str, dict[str, Any]]:
        """Return each server's node config as the program rendered it into the user data."""
        return labcloud.rendered_documents(self)

    def image_tar(self) -> Path:
        """Return the lab image's root file system tar, building it on first use."""
        path = self.lab_dir / "mailcow-lab-image.tar"
        if not path.exists():
            build_image_tar(path)
        return path

    def node_dir(self, name: str) -> Path:
        return self.lab_dir / "nodes" / name

    def _make_node(self, server: Any, layout: CloudLayout) -> LabNode:
        peers = [{"name": other.name, "index": other.index, "private_ip": other.private_ip} for other in layout.servers]
        paths = LabNodePaths(self.node_dir(server.name))
        rendered = self.rendered_documents().get(server.name)
        if rendered is None:
            raise LabError(f"the Pulumi program rendered no node config for {server.name}")
        document = lab_node_config(
            rendered,
            paths=paths,
            endpoint=self.endpoint,
            server_id=server.id,
            peers=peers,
            overrides=self.options.config_overrides,
        )
        machine = NodeMachine(
            server.name, server.index, self.network.node_ns(server.index), paths.node_dir, self.manifest
        )
        return LabNode(server, machine, document)

    def node(self, index: int) -> LabNode:
        try:
            return self.nodes[index]
        except KeyError:
            raise LabError(f"lab {self.lab_id} has no node {index}; it has {sorted(self.nodes)}") from None

    def node_by_name(self, name: str) -> LabNode:
        for node in self.nodes.values():
            if node.name == name:
                return node
        raise LabError(f"lab {self.lab_id} has no node named {name}")

    # --- up and down -------------------------------------------------------------------------

    def _phase(self, name: str, started: float) -> None:
        self.timings[name] = round(time.monotonic() - started, 2)
        log.info("lab %s: %s took %.2f s", self.lab_id, name, self.timings[name])

    def up(self) -> None:
        """Build the whole cluster; on failure, leave everything for `down` (and the logs)."""
        started = time.monotonic()
        self.network.create_core()
        self.start_cloud()
        self._phase("network and cloud", started)

        started = time.monotonic()
        self.provision()
        self._phase("pulumi program", started)

        started = time.monotonic()
        layout = self.require_layout()
        image_tar = self.image_tar()
        for server in layout.servers:
            self.network.add_node(NodeNetwork(server.name, server.index, server.public_ip, server.private_ip))
            self.nodes[server.index] = self._make_node(server, layout)
        self._parallel(
            "boot",
            lambda node: node.boot(image_tar, layout.floating_ips, self.network.add_floating_ip_address, self.cancel),
        )
        self._phase("node boot", started)

        started = time.monotonic()
        self.form_galera()
        self._phase("galera", started)

        started = time.monotonic()
        self.init_shared_volume()
        self._phase("init-data", started)

        started = time.monotonic()
        self.start_runtime()
        self.wait_for_master()
        self.reset_breakers()
        self._phase("first master", started)

    def scale_out(self, nodes: int, timeout: float = 180.0) -> list[LabNode]:
        """Grow the running cluster to `nodes` servers, as `pulumi up` with a higher nodeCount does.

        The program creates only the new servers and volumes; the new nodes boot, join Galera and
        start their agent and keepalived. The running nodes are left alone: their agents learn the
        new members from the API by label.
        """
        self.options.nodes = nodes
        self.stack = lab_stack(nodes, self.secrets)
        self.save()
        self.provision()
        layout = self.require_layout()
        added = []
        for server in layout.servers:
            if server.index in self.nodes:
                continue
            self.network.add_node(NodeNetwork(server.name, server.index, server.public_ip, server.private_ip))
            self.nodes[server.index] = self._make_node(server, layout)
            added.append(self.nodes[server.index])
        image_tar = self.image_tar()
        self._parallel(
            "boot",
            lambda node: node.boot(image_tar, layout.floating_ips, self.network.add_floating_ip_address, self.cancel),
            added,
        )
        for node in added:
            node.database.start(timeout=timeout)
            node.database.wait_synced(timeout)
        self.start_runtime(added)
        return added

    def serving_node(self) -> LabNode | None:
        """Return the node that runs every critical container and alone has the shared volume."""
        view = self.view()
        if len(view.serving) != 1 or view.mounted_on != view.serving:
            return None
        node = self.node_by_name(view.serving[0])
        if len(view.node(node.name).containers) < len(node.config.mailcow.critical_services):
            return None
        return node

    def wait_for_master(self, timeout: float = 120.0) -> LabNode:
        """Wait until one node serves: mounted, every critical container up, the floating IPs on it."""
        deadline = time.monotonic() + timeout
        while True:
            node = self.serving_node()
            if node is not None:
                routes = floating_ip_routes(self.network.router_ns, self.floating_addresses())
                if all(next_hop == node.server.public_ip for next_hop in routes.values()):
                    return node
            if time.monotonic() > deadline:
                lines = "\n".join(self.status()["lines"])
                raise LabError(f"no node became a serving master within {timeout:g} s:\n{lines}")
            time.sleep(0.2)

    def reset_breakers(self) -> None:
        """Close every node's circuit breaker, as an operator does once the cluster is settled.

        The first election after `up`, and every failover of a scenario, count as failovers onto
        a node. Without a reset, the next scenario would meet an open breaker.
        """
        for node in self.nodes.values():
            if node.machine.powered:
                node.machine.run(self.runtime_command(node, "breaker", "reset"), timeout=30.0)

    def start_runtime(self, nodes: list[LabNode] | None = None) -> None:
        """Learn the members as first boot does, then start each node's agent and its keepalived.

        `mailcow-ha peers sync` stores the members with their server ids in the state directory,
        where promote finds the volume holder's address. The agents and keepalived start in the
        order of their systemd units.
        """
        for node in nodes or list(self.nodes.values()):
            node.machine.run(self.runtime_command(node, "peers", "sync"), timeout=60.0)
            node.start_agent()
        for node in nodes or list(self.nodes.values()):
            node.start_keepalived()

    def wait_for_status_api(self, nodes: list[LabNode], timeout: float = 60.0) -> None:
        """Wait until each node's agent listens on its status API, as an operator checks before a bootstrap.

        The agent unit is `Type=simple`, so systemd reports it started before it listens. A command
        run right after boot can find a member's API closed, and `galera bootstrap` then rejects.
        """
        deadline = time.monotonic() + timeout
        for node in nodes:
            argv = ["ss", "-Hltn", f"sport = :{node.config.status_api.port}"]
            while not node.machine.run(argv, timeout=10.0, check=False).stdout.strip():
                if time.monotonic() > deadline:
                    raise LabError(
                        f"timed out after {timeout:g} s waiting for the agent of {node.name} to listen on "
                        f"port {node.config.status_api.port}; see {node.machine.log_dir}/agent.log"
                    )
                time.sleep(0.2)

    def form_galera(self) -> None:
        """First boot of Galera: node 1 bootstraps a new cluster, the others join it at once."""
        first = self.nodes[min(self.nodes)]
        first.database.start(bootstrap=True)
        first.database.wait_synced(60.0)
        self._create_database_users(first)
        others = [node for index, node in self.nodes.items() if node is not first]
        self._parallel("galera join", lambda node: node.database.start(), others)
        for node in others:
            node.database.wait_synced(120.0)

    def init_shared_volume(self) -> None:
        """Prepare the shared volume once, on the node the Pulumi program attached it to.

        init-data mounts the volume once, so its MMP block then names the host that the lab's
        kernel writes there (see trust_kernel_host_name).
        """
        first = self.nodes[min(self.nodes)]
        first.machine.run(self.runtime_command(first, "init-data"), timeout=120.0)
        self.trust_kernel_host_name(read_mmp_node_name(Path(self.shared_image())))

    def trust_kernel_host_name(self, name: str) -> None:
        """Let every node clear an MMP block that names `name`, the lab kernel's host name.

        The kernel writes its own host name into the MMP block, whatever the UTS namespace of the
        process that mounts (Linux 6.18 uses `init_utsname()` in fs/ext4/mmp.c). On Hetzner each
        node has a kernel of its own whose host name is the node name. In the lab every node shares
        the host's kernel, so the MMP block shows the host's name after any node lost the volume,
        and the node config lists that name in `volume.mmp_node_names`.
        """
        volume = self.options.config_overrides.setdefault("volume", {})
        volume["mmp_node_names"] = [name]
        self.save()
        for node in self.nodes.values():
            document = dict(node.document)
            document["volume"] = {**document.get("volume", {}), "mmp_node_names": [name]}
            node.update_config(document)

    def _create_database_users(self, node: LabNode) -> None:
        password = self.secrets.galera_password.replace("'", "''")
        user = node.config.galera.user
        node.database.execute(
            f"CREATE USER IF NOT EXISTS '{user}'@'localhost' IDENTIFIED BY '{password}'",
            f"GRANT PROCESS, REPLICATION CLIENT, SELECT ON *.* TO '{user}'@'localhost'",
            f"CREATE USER IF NOT EXISTS 'lab'@'%' IDENTIFIED BY '{password}'",
            "CREATE DATABASE IF NOT EXISTS lab",
            "GRANT ALL ON lab.* TO 'lab'@'%'",
        )

    def _parallel(self, what: str, action: Callable[[LabNode], object], nodes: list[LabNode] | None = None) -> None:
        chosen = list(self.nodes.values()) if nodes is None else nodes
        run_parallel(what, action, chosen, cancel=self.cancel, describe=lambda node: node.name)

    def down(self) -> list[str]:
        """Stop the lab's waits and client threads, then remove everything the manifest lists; return the problems."""
        self.cancel.set()
        if self._control is not None:
            self._control.close()
            self._control = None
        return remove_all(self.manifest)

    @staticmethod
    def remove(lab_dir: Path) -> list[str]:
        """Remove a lab by its manifest alone, which works even when lab.json is gone or corrupt."""
        return remove_all(Manifest(lab_dir))

    # --- looking at it -----------------------------------------------------------------------

    def require_layout(self) -> CloudLayout:
        if self.layout is None:
            raise LabError(f"lab {self.lab_id} has no cloud resources yet")
        return self.layout

    def shared_image(self) -> str:
        return str(self.lab_dir / "volumes" / f"volume-{self.require_layout().shared_volume_id}.img")

    def floating_addresses(self) -> list[str]:
        if self.layout is None:
            return []
        return [address.split("/")[0] for address in self.layout.floating_ips if ":" not in address]

    def view(self) -> LabView:
        """Return the lab's state now (see lab.status); cheap enough for 10 samples a second."""
        from lab.status import lab_view

        return lab_view(self)

    def status(self) -> dict[str, Any]:
        """Return a status report: one line per node and per floating IP, and the raw view."""
        from lab.status import lab_status

        return lab_status(self)

    def runtime_command(self, node: LabNode, *args: str) -> list[str]:
        """Return the argv of a `mailcow-ha` command run with the node's config."""
        return ["env", f"MAILCOW_HA_CONFIG={node.paths.config_file}", str(RUNTIME_BIN / "mailcow-ha"), *args]
