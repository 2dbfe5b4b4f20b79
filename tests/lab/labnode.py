"""One node of the lab cluster: its machine, Galera member, container engine and runtime processes.

`boot` does what a node's boot does on Hetzner Cloud (cloud-init at first boot, systemd after),
in the same order: the Galera volume mounted at its fstab place, the floating IPs on the public
interface, the container engine, the rendered keepalived and Galera files; then Galera, the
agent and keepalived start. Only paths and timings in the node config differ from production.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lab.database import NodeDatabase
from lab.engine import NodeEngine
from lab.node import NodeMachine
from lab.nodeconfig import PROJECT_NAME, LabNodePaths, write_node_config
from lab.provision import ServerLayout
from lab.volumes import device_link_name
from mailcow_ha.config import NodeConfig, parse_config
from mailcow_ha.render.keepalived import render_keepalived_conf
from mailcow_ha.render.nodeconfig import galera_inputs, keepalived_inputs

log = logging.getLogger(__name__)

RUNTIME_BIN = Path(__file__).resolve().parent.parent.parent / ".venv" / "bin"


class LabNode:
    """A lab node built from its server in the fake cloud and its config document."""

    def __init__(self, server: ServerLayout, machine: NodeMachine, document: dict[str, Any]) -> None:
        self.server = server
        self.machine = machine
        self.name = server.name
        self.index = server.index
        self.paths = LabNodePaths(machine.node_dir)
        self.document = document
        self.config: NodeConfig = parse_config(document, source=f"lab node config of {self.name}")
        self.database = NodeDatabase(
            machine,
            galera_inputs(self.config, self.peer_addresses),
            volume_link=self.paths.device_dir / device_link_name(server.db_volume_id),
            option_file=self.paths.galera_conf,
        )
        self.engine = NodeEngine(machine, PROJECT_NAME, self.paths.mount_point)

    @property
    def peer_addresses(self) -> list[str]:
        return [str(peer.private_ip) for peer in self.config.peers]

    def update_config(self, document: dict[str, Any]) -> None:
        """Replace the node config (a peer sync or a test changing a setting) and rewrite it."""
        self.document = document
        self.config = parse_config(document, source=f"lab node config of {self.name}")
        write_node_config(self.paths, document)

    def prepare_files(self) -> None:
        """Write the node config and the files a peer sync renders (keepalived.conf, Galera)."""
        for directory in (self.paths.state_dir, self.paths.mount_point, self.paths.project_dir, self.paths.device_dir):
            directory.mkdir(parents=True, exist_ok=True)
        write_node_config(self.paths, self.document)
        self.write_etc()
        self.render_keepalived()
        self.database.write_option_file()
        self.database.write_start_script()

    def write_etc(self) -> None:
        """Write the node's resolv.conf (no resolver, so lookups fail at once) and hosts file."""
        (self.machine.log_dir / "var-log").mkdir(parents=True, exist_ok=True)
        etc = self.machine.node_dir / "etc"
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(
            "# The lab has no DNS server.\nnameserver 127.0.0.1\noptions timeout:1 attempts:1\n"
        )
        hosts = ["127.0.0.1 localhost", *(f"{peer.private_ip} {peer.name}" for peer in self.config.peers)]
        (etc / "hosts").write_text("\n".join(hosts) + "\n")

    def render_keepalived(self) -> None:
        inputs = keepalived_inputs(self.config, self.peer_addresses)
        self.paths.keepalived_conf.write_text(render_keepalived_conf(inputs), encoding="utf-8")

    def boot(
        self, image_tar: Path, floating_ips: Sequence[str], add_address: Any, cancel: threading.Event | None = None
    ) -> None:
        """Power the node on and bring up what its boot brings up before Galera starts.

        Setting `cancel` (another node's boot failed) ends the wait for the container engine early.
        """
        self.prepare_files()
        self.machine.power_on()
        for address in floating_ips:
            add_address(self.index, address.split("/")[0])
        self.database.mount_volume()
        self.database.initialize()
        self.engine.start(cancel)
        self.engine.start_health_timer()
        self.engine.import_image(image_tar)
        self.engine.create_project(self.config.mailcow.critical_services)

    def start_agent(self) -> None:
        """Start the agent under a restart loop, as its systemd unit does (Restart=always, RestartSec=2).

        Like the unit's RuntimeDirectory, the run directory exists before the agent starts, and so
        before keepalived (ordered after the agent) creates the health file in it. A keepalived that
        finds no directory there cannot initialise its track file and never goes FAULT.
        """
        self.machine.run(["install", "-d", "-m", "0750", str(self.config.paths.run_dir)], timeout=10.0)
        script = (
            f"install -d -m 0750 {self.config.paths.run_dir}; "
            f'while :; do {RUNTIME_BIN / "mailcow-ha-agent"}; echo "agent exited with status $?"; sleep 2; done'
        )
        environment = {
            "MAILCOW_HA_CONFIG": str(self.paths.config_file),
            "PATH": f"{RUNTIME_BIN}:/usr/sbin:/usr/bin:/sbin:/bin",
        }
        self.machine.spawn(
            "agent", ["env", *(f"{key}={value}" for key, value in environment.items()), "sh", "-c", script]
        )

    def start_keepalived(self) -> None:
        """Start keepalived in the node with the rendered file, as its systemd unit would."""
        argv = [
            "keepalived",
            "--dont-fork",
            "--log-console",
            "--log-detail",
            "--vrrp",
            "--use-file",
            str(self.paths.keepalived_conf),
            "--pid",
            str(self.config.paths.keepalived_pid_file),
        ]
        self.machine.spawn("keepalived", argv)

    def kill_keepalived(self, signum: int = signal.SIGKILL) -> list[int]:
        return self.machine.signal_processes("keepalived", signum)
