"""A node's MariaDB Galera member, on the node's own Galera volume, with the project's option file.

The option file is rendered by `mailcow_ha.render.galera` from the node's addresses, as on a
real node. The member's data directory is the node's Galera volume, mounted inside the node
as its fstab entry mounts it at boot. Its socket and pid file are in the node's own /run.
"""

from __future__ import annotations

import logging
import os
import pwd
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql

from lab.node import NodeMachine
from lab.shell import LabError
from mailcow_ha.render.galera import GaleraInputs, render_galera_cnf

log = logging.getLogger(__name__)

SOCKET = Path("/run/mysqld/mysqld.sock")
PID_FILE = Path("/run/mysqld/mysqld.pid")
STATUS_QUERY = (
    "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_ready', 'wsrep_cluster_status', "
    "'wsrep_local_state_comment', 'wsrep_cluster_size', 'wsrep_last_committed')"
)


@dataclass(frozen=True)
class MemberStatus:
    """What `SHOW GLOBAL STATUS` reports about a member's place in the cluster."""

    ready: bool
    cluster_status: str
    local_state: str
    cluster_size: int
    last_committed: int

    @property
    def synced_primary(self) -> bool:
        return self.ready and self.cluster_status == "Primary" and self.local_state == "Synced"


@dataclass(frozen=True)
class SavedPosition:
    """A member's grastate.dat: the last committed seqno saved at a clean stop (-1 otherwise)."""

    uuid: str
    seqno: int
    safe_to_bootstrap: bool


class NodeDatabase:
    """The Galera member of one lab node."""

    def __init__(self, node: NodeMachine, inputs: GaleraInputs, *, volume_link: Path, option_file: Path) -> None:
        self.node = node
        self.galera = inputs
        self.volume_link = volume_link
        self.data_dir = inputs.data_dir
        self.option_file = option_file
        self.log_file = node.log_dir / "var-log" / inputs.log_error.relative_to("/var/log")
        """The host path of the error log, which the node sees at `inputs.log_error` (see lab.nodeinit)."""
        self.start_script = node.node_dir / "bin" / "mariadb-start"

    def write_option_file(self) -> None:
        self.option_file.write_text(render_galera_cnf(self.galera), encoding="utf-8")
        self.option_file.chmod(0o644)

    def write_start_script(self) -> None:
        """Write the node's stand-in for `systemctl start mariadb`, which the node config names.

        Like systemd with MariaDB's notify unit, it returns once the server accepts connections
        (after any state transfer), or fails when mariadbd exits first.
        """
        self.start_script.parent.mkdir(parents=True, exist_ok=True)
        self.start_script.write_text(
            _START_SCRIPT.format(
                socket=SOCKET, socket_dir=SOCKET.parent, option_file=self.option_file, log_file=self.galera.log_error
            ),
            encoding="utf-8",
        )
        self.start_script.chmod(0o755)

    def mount_volume(self) -> None:
        """Mount the node's Galera volume on the data directory inside the node, as at boot."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        os.chown(self.log_file.parent, *_mysql_ids())
        if not self.volume_link.exists():
            raise LabError(f"{self.node.name}: Galera volume {self.volume_link} is not attached")
        self.node.run(["mount", str(self.volume_link), str(self.data_dir)], timeout=30.0)
        self.node.run(["chown", "mysql:mysql", str(self.data_dir)])
        self.node.run(["install", "-d", "-o", "mysql", "-g", "mysql", str(SOCKET.parent)])

    def initialize(self) -> bool:
        """Create the system tables on an empty volume; return whether it had to."""
        if self.node.path(self.data_dir / "mysql").exists():
            return False
        self.node.run(
            [
                "mariadb-install-db",
                "--user=mysql",
                f"--datadir={self.data_dir}",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
            ],
            timeout=120.0,
        )
        return True

    def start(self, *, bootstrap: bool = False, timeout: float = 120.0) -> None:
        """Start mariadbd in the node through its start script and wait until it accepts connections.

        With `bootstrap` it forms a new Primary component alone.
        """
        self.write_option_file()
        self.write_start_script()
        argv = [str(self.start_script), *(["--wsrep-new-cluster"] if bootstrap else [])]
        self.node.run(argv, timeout=timeout)
        log.info("node %s: mariadbd started%s", self.node.name, " (bootstrap)" if bootstrap else "")

    def running(self) -> bool:
        return bool(self.node.processes("mariadbd"))

    def stop(self, timeout: float = 60.0) -> None:
        """Stop mariadbd cleanly (SIGTERM) and wait, so grastate.dat records its position."""
        self._signal_and_wait(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Kill mariadbd (SIGKILL), as a crash would."""
        self._signal_and_wait(signal.SIGKILL, 10.0)

    def _signal_and_wait(self, signum: int, timeout: float) -> None:
        self.node.signal_processes("mariadbd", signum)
        deadline = time.monotonic() + timeout
        while self.running():
            if time.monotonic() > deadline:
                raise LabError(f"{self.node.name}: mariadbd still runs {timeout:g} s after signal {signum}")
            time.sleep(0.1)

    def connect(self, timeout: float = 2.0) -> pymysql.connections.Connection[Any]:
        """Connect as root through the node's socket, reached through the node's mount namespace."""
        return pymysql.connect(
            unix_socket=str(self.node.path(SOCKET)),
            user="root",
            connect_timeout=timeout,
            read_timeout=timeout,
            write_timeout=timeout,
            autocommit=True,
        )

    def execute(self, *statements: str, timeout: float = 10.0) -> list[tuple[Any, ...]]:
        """Run statements in order as root and return the rows of the last one."""
        connection = self.connect(timeout)
        try:
            with connection.cursor() as cursor:
                for statement in statements:
                    cursor.execute(statement)
                return list(cursor.fetchall())
        finally:
            connection.close()

    def status(self, timeout: float = 2.0) -> MemberStatus:
        rows = dict(self.execute(STATUS_QUERY, timeout=timeout))
        return MemberStatus(
            ready=rows.get("wsrep_ready") == "ON",
            cluster_status=str(rows.get("wsrep_cluster_status", "")),
            local_state=str(rows.get("wsrep_local_state_comment", "")),
            cluster_size=int(rows.get("wsrep_cluster_size", 0)),
            last_committed=int(rows.get("wsrep_last_committed", -1)),
        )

    def try_status(self) -> MemberStatus | None:
        """Return the member's status, or None when the query fails."""
        if not self.node.powered:
            return None
        try:
            return self.status(timeout=1.0)
        except (pymysql.MySQLError, OSError):
            return None

    def wait_synced(self, timeout: float) -> MemberStatus:
        """Wait until the member is Synced in a Primary component."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.try_status()
            if status is not None and status.synced_primary:
                return status
            if not self.running():
                raise LabError(f"{self.node.name}: mariadbd exited; see {self.log_file}\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise LabError(f"{self.node.name}: not Synced/Primary after {timeout:g} s (last: {status})")
            time.sleep(0.1)

    def saved_position(self) -> SavedPosition:
        """Read grastate.dat on the node's mounted Galera volume."""
        text = self.node.path(self.data_dir / "grastate.dat").read_text(encoding="utf-8")
        fields = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in text.splitlines())}
        return SavedPosition(
            uuid=fields.get("uuid", ""),
            seqno=int(fields.get("seqno", "-1")),
            safe_to_bootstrap=fields.get("safe_to_bootstrap", "0") == "1",
        )

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


_START_SCRIPT = """#!/bin/sh
# Stand-in for `systemctl start mariadb` on a mailcow-ha lab node: start mariadbd detached,
# then wait until it accepts connections on its socket, or fail if it exits first.
install -d -o mysql -g mysql {socket_dir}
setsid mariadbd --defaults-file={option_file} "$@" >> {log_file} 2>&1 < /dev/null &
pid=$!
waited=0
while [ "$waited" -lt 1200 ]; do
    if mariadb-admin --socket={socket} --connect-timeout=1 ping > /dev/null 2>&1; then
        exit 0
    fi
    kill -0 "$pid" 2> /dev/null || {{ echo "mariadbd exited; see {log_file}" >&2; exit 1; }}
    sleep 0.1
    waited=$((waited + 1))
done
echo "mariadbd did not accept connections within 120 s; see {log_file}" >&2
exit 1
"""


def _mysql_ids() -> tuple[int, int]:
    entry = pwd.getpwnam("mysql")
    return entry.pw_uid, entry.pw_gid
