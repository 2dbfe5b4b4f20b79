"""A real MariaDB Galera cluster on one machine, for integration tests.

Each member is a real `mariadbd` started with the option file that `render.galera` renders, so
the tests run what the nodes run. Members listen on their own loopback address (a random
127.X.Y.0/24 per cluster, which Linux routes to `lo` without configuration), so several clusters
of concurrent test runs never share a port. They run as the `mysql` user, because rsync SST fails
when mariadbd runs as root, with tiny buffers, and keep everything under one directory that the
cluster removes when it stops.

Typical use, through the `galera` fixture (the session's cluster, restored before each test), which
tests/integration/conftest.py imports from here:

    cluster.ensure_healthy()          # every member running, Synced, cluster size 3
    cluster.nodes[1].kill()           # SIGKILL one member
    cluster.nodes[0].wait_for(lambda s: s.cluster_size == 2, timeout=20)
    cluster.ensure_healthy()          # restart what is down (bootstrapping if needed)

Tests that break the cluster call `ensure_healthy()` when they finish, so the next test starts
from three Synced members.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql
import pytest

from mailcow_ha.render.galera import GaleraInputs, render_galera_cnf

log = logging.getLogger(__name__)

MARIADBD = "/usr/sbin/mariadbd"
INSTALL_DB = "/usr/bin/mariadb-install-db"
RUN_AS = "mysql"
STATUS_QUERY = (
    "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_ready', 'wsrep_cluster_status', "
    "'wsrep_local_state_comment', 'wsrep_cluster_size', 'wsrep_cluster_state_uuid', 'wsrep_last_committed')"
)
_RECOVERED = re.compile(r"WSREP: Recovered position:\s*([0-9a-f-]{36}):(-?\d+)")


class GaleraHarnessError(RuntimeError):
    """A member did not start, stop or reach the expected state in time; the message has its log tail."""


def galera_available() -> str | None:
    """Return why real Galera cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (mariadbd drops to the mysql user)"
    for path in (MARIADBD, INSTALL_DB, "/usr/lib/galera/libgalera_smm.so", "/usr/bin/wsrep_sst_rsync"):
        if not Path(path).exists():
            return f"{path} is missing; run scripts/install-system-packages"
    try:
        import pwd

        pwd.getpwnam(RUN_AS)
    except KeyError:
        return f"user {RUN_AS} is missing; install mariadb-server"
    return None


@dataclass(frozen=True)
class MemberStatus:
    """The wsrep status variables of one member."""

    ready: bool
    cluster_status: str
    local_state: str
    cluster_size: int
    cluster_uuid: str
    last_committed: int

    @property
    def synced_primary(self) -> bool:
        return self.ready and self.cluster_status == "Primary" and self.local_state == "Synced"


@dataclass(frozen=True)
class Position:
    """A member's place in the cluster's history, from grastate.dat or `--wsrep-recover`."""

    uuid: str
    seqno: int
    safe_to_bootstrap: bool


class GaleraNode:
    """One mariadbd member: its directories, option file and process."""

    def __init__(self, cluster: GaleraCluster, index: int, address: str) -> None:
        self.cluster = cluster
        self.index = index
        self.name = f"{cluster.name}-{index}"
        self.address = address
        self.base_dir = cluster.base_dir / f"node{index}"
        self.data_dir = self.base_dir / "data"
        self.socket = self.base_dir / "mysqld.sock"
        self.pid_file = self.base_dir / "mysqld.pid"
        self.log_file = self.base_dir / "error.log"
        self.option_file = self.base_dir / "my.cnf"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        if self.process is None:
            raise GaleraHarnessError(f"{self.name} was never started")
        return self.process.pid

    def inputs(self) -> GaleraInputs:
        """Return the renderer inputs of this member, with tiny buffers for tests."""
        return GaleraInputs(
            cluster_name=self.cluster.name,
            node_name=self.name,
            node_address=self.address,
            peer_addresses=[node.address for node in self.cluster.nodes],
            data_dir=self.data_dir,
            socket=self.socket,
            pid_file=self.pid_file,
            log_error=self.log_file,
            buffer_pool_size="16M",
            gcache_size="16M",
            extra_mysqld={
                "innodb_log_file_size": "8M",
                "skip-name-resolve": None,
                "max_connections": 50,
                "performance_schema": "OFF",
            },
        )

    def write_option_file(self) -> None:
        self.option_file.write_text(render_galera_cnf(self.inputs()), encoding="utf-8")
        os.chmod(self.option_file, 0o644)

    def start(self, *, bootstrap: bool = False, wait: bool = True, timeout: float = 60.0) -> None:
        """Start mariadbd; with `bootstrap` it forms a new Primary component alone.

        With `wait` this returns once the member is Synced in a Primary component.
        """
        if self.running:
            raise GaleraHarnessError(f"{self.name} is already running (pid {self.pid})")
        self.write_option_file()
        self.socket.unlink(missing_ok=True)
        command = [MARIADBD, f"--defaults-file={self.option_file}"]
        if bootstrap:
            command.append("--wsrep-new-cluster")
        log.info("starting %s%s", self.name, " (bootstrap)" if bootstrap else "")
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if wait:
            self.wait_for(lambda status: status.synced_primary, timeout=timeout, what="Synced in a Primary component")

    def stop(self, timeout: float = 60.0) -> None:
        """Stop mariadbd with SIGTERM (a clean shutdown) and wait for it to exit."""
        self._signal_and_wait(signal.SIGTERM, timeout)

    def kill(self, timeout: float = 10.0) -> None:
        """Kill mariadbd with SIGKILL (a crash) and wait for it to exit."""
        self._signal_and_wait(signal.SIGKILL, timeout)

    def pause(self) -> None:
        """Stop the process with SIGSTOP: the kernel accepts connections but no query returns (a hung server)."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Continue a member stopped by `pause`."""
        os.kill(self.pid, signal.SIGCONT)

    def _signal_and_wait(self, signum: signal.Signals, timeout: float) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGCONT)
        process.send_signal(signum)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
            raise GaleraHarnessError(f"{self.name} did not exit {timeout:.0f} s after {signum.name}") from None

    def connect(self, *, timeout: float = 2.0, database: str | None = None) -> pymysql.connections.Connection[Any]:
        """Connect as root through the member's unix socket (root authenticates by socket peer)."""
        return pymysql.connect(
            unix_socket=str(self.socket),
            user="root",
            database=database,
            connect_timeout=timeout,
            read_timeout=timeout,
            write_timeout=timeout,
            autocommit=True,
        )

    def execute(self, *statements: str, timeout: float = 10.0) -> list[tuple[Any, ...]]:
        """Run statements in order and return the rows of the last one."""
        connection = self.connect(timeout=timeout)
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
            cluster_uuid=str(rows.get("wsrep_cluster_state_uuid", "")),
            last_committed=int(rows.get("wsrep_last_committed", -1)),
        )

    def wait_for(
        self, predicate: Callable[[MemberStatus], bool], *, timeout: float, what: str = "the expected state"
    ) -> MemberStatus:
        """Poll the member's status every 0.1 s until `predicate` holds; raise with the log tail otherwise."""
        deadline = time.monotonic() + timeout
        last: MemberStatus | str = "no answer yet"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise GaleraHarnessError(
                    f"{self.name} exited with status {self.process.returncode} while waiting for {what}\n"
                    + self.log_tail()
                )
            try:
                status = self.status(timeout=1.0)
            except pymysql.MySQLError as error:
                last = f"{type(error).__name__}: {error}"
            else:
                if predicate(status):
                    return status
                last = status
            time.sleep(0.1)
        raise GaleraHarnessError(f"{self.name} not {what} after {timeout:.0f} s (last: {last})\n" + self.log_tail())

    def position(self) -> Position:
        """Read grastate.dat: the saved position (seqno -1 while running or after a crash)."""
        text = (self.data_dir / "grastate.dat").read_text(encoding="utf-8")
        fields = dict(
            (key.strip(), value.strip()) for key, _, value in (line.partition(":") for line in text.splitlines())
        )
        return Position(
            uuid=fields.get("uuid", ""),
            seqno=int(fields.get("seqno", "-1")),
            safe_to_bootstrap=fields.get("safe_to_bootstrap", "0") == "1",
        )

    def recover_position(self, timeout: float = 60.0) -> Position:
        """Run `mariadbd --wsrep-recover` on the stopped member and return the recovered position."""
        if self.running:
            raise GaleraHarnessError(f"{self.name} is running; stop it before recovering its position")
        self.write_option_file()
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        subprocess.run(
            [MARIADBD, f"--defaults-file={self.option_file}", "--wsrep-recover"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
        with self.log_file.open("rb") as stream:
            stream.seek(offset)
            output = stream.read().decode("utf-8", "replace")
        match = _RECOVERED.search(output)
        if match is None:
            raise GaleraHarnessError(f"{self.name}: --wsrep-recover printed no position\n{output[-2000:]}")
        return Position(match.group(1), int(match.group(2)), self.position().safe_to_bootstrap)

    def mark_safe_to_bootstrap(self) -> None:
        """Set `safe_to_bootstrap: 1` in grastate.dat, as an operator does after choosing this member."""
        path = self.data_dir / "grastate.dat"
        text = re.sub(r"safe_to_bootstrap:\s*\d", "safe_to_bootstrap: 1", path.read_text(encoding="utf-8"))
        path.write_text(text, encoding="utf-8")

    def log_tail(self, lines: int = 30) -> str:
        try:
            content = self.log_file.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return f"({self.log_file} does not exist)"
        return f"--- last lines of {self.log_file} ---\n" + "\n".join(content[-lines:])


class GaleraCluster:
    """A cluster of real mariadbd members on loopback addresses, under one private directory."""

    def __init__(self, size: int = 3, *, name: str | None = None, root: Path | None = None) -> None:
        token = f"{os.getpid()}{random.randrange(1000, 9999)}"
        self.name = name or f"galera-{token}"
        self.base_dir = Path(tempfile.mkdtemp(prefix=f"mailcow-ha-galera-{token}-", dir=root or "/tmp"))
        os.chmod(self.base_dir, 0o755)
        self.subnet = _free_loopback_subnet(size)
        self.nodes = [GaleraNode(self, index, f"{self.subnet}.{index}") for index in range(1, size + 1)]

    def start(self, timeout: float = 120.0) -> None:
        """Initialise node 1's data directory, bootstrap it, and join the others one by one (rsync SST)."""
        for node in self.nodes:
            node.data_dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.base_dir, RUN_AS, RUN_AS)
        for node in self.nodes:
            for path in (node.base_dir, node.data_dir):
                shutil.chown(path, RUN_AS, RUN_AS)
        first = self.nodes[0]
        subprocess.run(
            [INSTALL_DB, f"--datadir={first.data_dir}", f"--user={RUN_AS}", "--auth-root-authentication-method=socket"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=True,
        )
        first.start(bootstrap=True, timeout=timeout)
        for node in self.nodes[1:]:
            node.start(timeout=timeout)
        self.wait_healthy(timeout=timeout)

    def wait_healthy(self, timeout: float = 60.0) -> None:
        size = len(self.nodes)
        for node in self.nodes:
            node.wait_for(
                lambda status: status.synced_primary and status.cluster_size == size,
                timeout=timeout,
                what=f"Synced in a Primary component of size {size}",
            )

    def primary_members(self) -> list[GaleraNode]:
        """Running members that reply to a status query and belong to a Primary component."""
        members = []
        for node in self.nodes:
            if not node.running:
                continue
            try:
                if node.status(timeout=1.0).cluster_status == "Primary":
                    members.append(node)
            except pymysql.MySQLError:
                continue
        return members

    def ensure_healthy(self, timeout: float = 120.0) -> None:
        """Bring every member back to Synced in one Primary component, whatever a test left behind.

        Paused members are resumed; stopped members rejoin a running Primary component, all at
        once. Without one, the running member with the highest committed seqno bootstraps in
        place (`pc.bootstrap=YES`). When none runs, the member with the highest recovered
        position bootstraps from its data directory, as an operator would do after losing quorum.
        """
        for node in self.nodes:
            if node.running:
                os.kill(node.pid, signal.SIGCONT)
        if self._wait_for_primary(timeout=20.0) is None and not self._bootstrap_in_place():
            self.bootstrap_most_advanced(timeout=timeout)
        stopped = [node for node in self.nodes if not node.running]
        for node in stopped:
            node.start(wait=False)
        self.wait_healthy(timeout=timeout)

    def _bootstrap_in_place(self) -> bool:
        """Make the most advanced running member a Primary component of its own (`pc.bootstrap`).

        Returns False when no member runs, so the caller recovers from the data directories.
        """
        running: list[tuple[int, GaleraNode]] = []
        for node in self.nodes:
            if node.running:
                try:
                    running.append((node.status(timeout=2.0).last_committed, node))
                except pymysql.MySQLError:
                    continue
        if not running:
            return False
        _, best = max(running, key=lambda item: item[0])
        log.info("bootstrapping the running member %s in place", best.name)
        best.execute("SET GLOBAL wsrep_provider_options = 'pc.bootstrap=YES'")
        best.wait_for(lambda status: status.synced_primary, timeout=30, what="Primary after pc.bootstrap")
        return True

    def _wait_for_primary(self, timeout: float) -> GaleraNode | None:
        """Return a member of a Primary component, or None once every running member reports none.

        Members that do not reply yet (starting, or just resumed) are waited for up to `timeout`.
        So is a Primary component that still counts members which are no longer running, because
        Galera notices a crash only after its suspect timeout (about 5 s).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            running = [node for node in self.nodes if node.running]
            unsettled = 0
            for node in running:
                try:
                    status = node.status(timeout=1.0)
                except pymysql.MySQLError:
                    unsettled += 1
                    continue
                if status.cluster_status != "Primary":
                    continue
                if status.cluster_size <= len(running):
                    return node
                unsettled += 1
            if unsettled == 0:
                return None
            time.sleep(0.2)
        return None

    def bootstrap_most_advanced(self, timeout: float = 120.0) -> GaleraNode:
        """Stop every member, bootstrap the one with the highest recovered seqno, and return it."""
        for node in self.nodes:
            node.stop()
        positions = {node.index: node.recover_position() for node in self.nodes}
        best = max(self.nodes, key=lambda node: positions[node.index].seqno)
        log.info("bootstrapping %s at %s", best.name, positions[best.index])
        best.mark_safe_to_bootstrap()
        best.start(bootstrap=True, timeout=timeout)
        return best

    def stop_ordered(self, order: Sequence[int] | None = None, timeout: float = 60.0) -> None:
        """Stop members one by one with SIGTERM, in `order` (node indexes, default 1..N).

        The last member stopped keeps `safe_to_bootstrap: 1` and the highest seqno.
        """
        for index in order or [node.index for node in self.nodes]:
            self.nodes[index - 1].stop(timeout)

    def create_user(self, user: str, password: str) -> None:
        """Create a user that connects through the socket with a password and may read status only."""
        node = self.primary_members()[0]
        connection = node.connect(timeout=10.0)
        try:
            with connection.cursor() as cursor:
                cursor.execute("CREATE OR REPLACE USER %s@'localhost' IDENTIFIED BY %s", (user, password))
        finally:
            connection.close()

    def close(self) -> None:
        """Kill every member and remove the cluster's directory."""
        for node in self.nodes:
            try:
                node.kill()
            except GaleraHarnessError as error:
                log.error("%s", error)
        shutil.rmtree(self.base_dir, ignore_errors=True)


def _free_loopback_subnet(size: int, attempts: int = 50) -> str:
    """Pick a random 127.X.Y prefix whose Galera ports are free on every member's address."""
    for _ in range(attempts):
        prefix = f"127.{random.randrange(100, 250)}.{random.randrange(1, 250)}"
        addresses = [f"{prefix}.{index}" for index in range(1, size + 1)]
        if all(_port_free(address, port) for address in addresses for port in (3306, 4444, 4567, 4568)):
            return prefix
    raise GaleraHarnessError(f"no free loopback subnet for {size} Galera members after {attempts} attempts")


def _port_free(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="session")
def galera_cluster() -> Iterator[GaleraCluster]:
    """A three-member cluster for the whole test session; skips the test where Galera cannot run."""
    reason = galera_available()
    if reason is not None:
        pytest.skip(f"real MariaDB Galera: {reason}")
    cluster = GaleraCluster(3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def galera(galera_cluster: GaleraCluster) -> GaleraCluster:
    """The session's cluster, restored to three Synced members before the test runs."""
    galera_cluster.ensure_healthy()
    return galera_cluster
