"""Measure the node agent: steady-state CPU on an idle healthy master, and the time from a critical
container's death to keepalived leaving MASTER; then the same for a naive polling script.

The measured node is a real setup on this machine. It has a one-member MariaDB Galera cluster
(Primary and Synced), seven containers named like mailcow's in podman (through its Docker API),
the floating IP on the node's interface, and keepalived in a network namespace with a second
keepalived as its peer. The agent is the production wiring (`build_agent`, probes, event
watcher, guardian, status API). Its promote mounts a tmpfs with the volume marker at the mount
point and starts the containers, and its demote stops them and unmounts: no cloud resource moves.

The naive alternative is what many setups run: every 2 s a fresh Python process imports docker
and pymysql, checks the critical containers and Galera, and writes keepalived's track file.

"Death" is the time of podman's `die` event, and "keepalived left MASTER" the moment keepalived
removed its marker address from the namespace's loopback (seen through `ip monitor address`).

Usage (root): .venv/bin/python benchmarks/agent_detection.py [--cpu-seconds 60] [--trials 5]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPOSITORY / "tests")]

FLOATING_IP = "203.0.113.50/32"
USER = "mailcow_ha_bench"
PASSWORD = "bench-password"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

NAIVE_CHECK = """
import os, sys, docker, pymysql
project, socket_path, user, password, health, services = sys.argv[1:7]
healthy = True
try:
    api = docker.APIClient(base_url=os.environ["DOCKER_HOST"], version="auto", timeout=5)
    running = {c["Labels"].get("com.docker.compose.service") for c in
               api.containers(filters={"label": "com.docker.compose.project=" + project, "status": "running"})}
    healthy = all(service in running for service in services.split(","))
    connection = pymysql.connect(unix_socket=socket_path, user=user, password=password,
                                 connect_timeout=2, read_timeout=2)
    with connection.cursor() as cursor:
        cursor.execute("SHOW GLOBAL STATUS WHERE Variable_name IN "
                       "('wsrep_ready', 'wsrep_cluster_status', 'wsrep_local_state_comment')")
        status = dict(cursor.fetchall())
    connection.close()
    healthy = healthy and status.get("wsrep_ready") == "ON" and status.get("wsrep_cluster_status") == "Primary" \\
        and status.get("wsrep_local_state_comment") == "Synced"
except Exception:
    healthy = False
temporary = health + ".naive"
with open(temporary, "w") as stream:
    stream.write("0\\n" if healthy else "1\\n")
os.replace(temporary, health)
"""


# --- the two programs under test -------------------------------------------------------------------


def run_node(config_path: Path) -> int:
    """Run the measured agent: production wiring; promote and demote mount a tmpfs and start containers, or undo it."""
    from mailcow_ha.adapters import blockdev
    from mailcow_ha.adapters.engine import Engine
    from mailcow_ha.agent.wiring import build_agent
    from mailcow_ha.cli.agent import serve
    from mailcow_ha.config import NodeConfig, load_config
    from mailcow_ha.deadline import Deadline
    from mailcow_ha.failover.containers import ProjectContainers
    from mailcow_ha.failover.marker import VolumeMarker, write_marker
    from mailcow_ha.failover.transitions import CancelToken
    from mailcow_ha.logsetup import configure_logging

    class NoAlerts:
        def send(self, event: Any, reason: str, details: dict[str, str] | None = None) -> None:
            return None

        def close(self, timeout: float = 0.0) -> bool:
            return True

    def build(config: NodeConfig, alerter: Any) -> Any:
        engine = Engine(config.paths.docker_socket, request_timeout=30)
        containers = ProjectContainers(engine, config.mailcow.project_name, config.mailcow.critical_services)

        mount_point = config.paths.mount_point

        def promote(token: CancelToken) -> None:
            if not blockdev.mounts_at(mount_point, blockdev.read_mountinfo()):
                subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "bench-data", str(mount_point)], check=True)
                created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                write_marker(mount_point, VolumeMarker(cluster=config.cluster, volume_id=1, created_at=created))
            containers.start(Deadline.after("bench promote", 60), token.check)

        def demote(token: CancelToken) -> None:
            containers.stop(Deadline.after("bench demote", 60))
            if blockdev.mounts_at(mount_point, blockdev.read_mountinfo()):
                subprocess.run(["umount", str(mount_point)], check=True)

        return build_agent(config, alerter, transitions=(promote, demote))

    configure_logging("INFO")
    return int(serve(load_config(config_path), build=build, make_alerter=lambda config: NoAlerts()))


def run_naive(arguments: list[str], interval: float) -> int:
    """Run the naive alternative: a fresh interpreter every `interval` seconds."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    while not stop.is_set():
        started = time.monotonic()
        subprocess.run([sys.executable, "-c", NAIVE_CHECK, *arguments], check=False, timeout=30)
        stop.wait(max(0.0, interval - (time.monotonic() - started)))
    return 0


# --- measuring -----------------------------------------------------------------------------------------


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def guardian_of(agent_pid: int) -> int:
    """Return the pid of the agent's guardian, its only child process."""
    children = Path(f"/proc/{agent_pid}/task/{agent_pid}/children").read_text().split()
    if len(children) != 1:
        raise RuntimeError(f"expected one guardian child of agent pid {agent_pid}, found {children}")
    return int(children[0])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class AddressMonitor:
    """Timestamps (wall clock) of the marker address leaving and joining loopback in a namespace."""

    def __init__(self, namespace: str, address: str) -> None:
        self.address = address
        self.removed: queue.Queue[float] = queue.Queue()
        self.process = subprocess.Popen(
            ["ip", "-n", namespace, "monitor", "address"], stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("Deleted") and f"{self.address}/" in line:
                self.removed.put(time.time())

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(5)


class DeathWatcher:
    """Wall-clock times of `die` events, from a dedicated event stream."""

    def __init__(self, engine: Any, project: str) -> None:
        self.deaths: queue.Queue[tuple[str, float]] = queue.Queue()
        self.stream = engine.events(project)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for event in self.stream:
                if event.action == "die":
                    self.deaths.put((event.service, event.time))
        except Exception as error:
            # The stream ends with an error when it is closed.
            print(f"death watcher stopped: {error}", file=sys.stderr)

    def close(self) -> None:
        self.stream.close()


def wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


class Bench:
    """The measured node and its peer, with everything they need."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.agent: subprocess.Popen[bytes] | None = None
        self.naive: subprocess.Popen[bytes] | None = None
        self._cleanups: list[Any] = []
        try:
            self._set_up()
        except BaseException:
            self.close()
            raise

    def _set_up(self) -> None:
        from harness.galera import GaleraCluster
        from harness.keepalived import VrrpCluster
        from harness.podman import HealthDriver, MailcowProject, PodmanService

        self.galera = GaleraCluster(1)
        self._cleanups.append(self.galera.close)
        self.galera.start()
        self.galera.create_user(USER, PASSWORD)
        # podman rejects a run root longer than 50 characters, so it gets its own short directory.
        self.podman = PodmanService.start()
        self._cleanups.append(self.podman.close)
        self.project = MailcowProject.create(self.podman, f"bench{secrets.token_hex(3)}")
        for container in self.project.containers.values():
            self.podman.client.start(container)
        # podman runs no health checks without systemd; this thread runs them while a
        # container is not yet healthy, and stays idle otherwise.
        self.health_driver = HealthDriver(self.podman, self.project.name)
        self.health_driver.__enter__()
        self._cleanups.append(lambda: self.health_driver.__exit__(None, None, None))
        wait(self._all_healthy, 60, "healthy containers")
        # The agent's promote mounts a tmpfs here (in the agent's own mount namespace), standing in
        # for the shared volume.
        self.mount_point = self.workdir / "mnt"
        self.mount_point.mkdir()
        self.vrrp = VrrpCluster(2, self.workdir / "vrrp")
        self._cleanups.append(self.vrrp.close)
        self.node, self.peer = self.vrrp.nodes
        self.node.namespace.add_address("lo", FLOATING_IP)
        self.config_path = self._write_config()
        self.vrrp.start(healthy=False)
        self.peer.set_health(1)

    def _all_healthy(self) -> bool:
        return all(
            (self.podman.inspect(name)["State"].get("Health") or {}).get("Status") == "healthy"
            for name in self.project.containers.values()
        )

    def _write_config(self) -> Path:
        from harness.nodeconfig import node_config_dict, write_node_config

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        node, peer = self.node, self.peer
        document = node_config_dict(
            cluster="bench",
            node={
                "name": "bench-1",
                "index": 1,
                "private_ip": node.address,
                "private_interface": "eth0",
                "public_interface": "lo",
            },
            peers=[
                {"name": "bench-1", "index": 1, "private_ip": node.address},
                {"name": "bench-2", "index": 2, "private_ip": peer.address},
            ],
            hetzner={
                "token": "not-used",
                "endpoint": "http://127.0.0.1:9/v1",
                "server_id": 1,
                "floating_ip_ids": [1],
                "floating_ips": [FLOATING_IP],
                "shared_volume_id": 1,
            },
            galera={
                "password": PASSWORD,
                "user": USER,
                "cluster_name": self.galera.name,
                "socket": str(self.galera.nodes[0].socket),
            },
            mailcow={"project_name": self.project.name, "critical_services": sorted(self.project.containers)},
            status_api={"secret": "bench-secret", "port": port},
            keepalived={"priority": 250, "agent_process": None},
            membership={"enabled": False},
            paths={
                "state_dir": str(self.workdir / "state"),
                "run_dir": str(self.workdir / "run"),
                "keepalived_fifo": str(node.fifo),
                "health_file": str(node.health_file),
                "keepalived_pid_file": str(node.daemon.pid_file),
                "keepalived_data_file": str(node.daemon.data_file),
                "keepalived_conf": str(node.daemon.config_path),
                "mount_point": str(self.mount_point),
                "device_dir": str(self.workdir / "dev"),
                "docker_socket": self.podman.base_url,
                "galera_conf": str(self.workdir / "galera.cnf"),
            },
        )
        return write_node_config(self.workdir / "node.yaml", document)

    # --- the node under test ------------------------------------------------------------------------

    def start_agent(self) -> None:
        log = (self.workdir / "agent.log").open("ab")
        self.agent = subprocess.Popen(
            [*self.node.namespace.exec_argv([sys.executable, __file__, "node", str(self.config_path)])],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def agent_pid(self) -> int:
        """Return the agent's own pid (`ip netns exec` execs it in place, so it keeps the pid)."""
        assert self.agent is not None
        return self.agent.pid

    def stop_agent(self) -> None:
        if self.agent is not None:
            self.agent.terminate()
            self.agent.wait(30)
            self.agent = None

    def start_naive(self) -> None:
        arguments = [
            self.project.name,
            str(self.galera.nodes[0].socket),
            USER,
            PASSWORD,
            str(self.node.health_file),
            ",".join(sorted(self.project.containers)),
        ]
        environment = {**os.environ, "DOCKER_HOST": self.podman.base_url}
        self.naive = subprocess.Popen(
            [sys.executable, __file__, "naive", json.dumps(arguments)], env=environment, stderr=subprocess.DEVNULL
        )

    def stop_naive(self) -> None:
        if self.naive is not None:
            self.naive.terminate()
            self.naive.wait(30)
            self.naive = None

    def make_node_master(self) -> None:
        """Make the measured node MASTER: the peer reports unhealthy until it is, then healthy again."""
        self.peer.set_health(1)
        wait(self.node.is_master, 30, "the measured node to become MASTER")
        self.peer.set_health(0)

    def log_size(self) -> int:
        path = self.workdir / "agent.log"
        return path.stat().st_size if path.exists() else 0

    def log_since(self, offset: int) -> str:
        with (self.workdir / "agent.log").open("rb") as stream:
            stream.seek(offset)
            return stream.read().decode("utf-8", "replace")

    def wait_for_log(self, text: str, offset: int, what: str) -> None:
        wait(lambda: self.agent_says(text, offset), 60, what)

    def agent_says(self, text: str, offset: int) -> bool:
        with (self.workdir / "agent.log").open("rb") as stream:
            stream.seek(offset)
            return text in stream.read().decode("utf-8", "replace")

    def close(self) -> None:
        """Stop the programs, then undo the setup in reverse order."""
        self.stop_agent()
        self.stop_naive()
        for cleanup in reversed(self._cleanups):
            try:
                cleanup()
            except Exception as error:
                print(f"cleanup failed: {error}", file=sys.stderr)


def measure_cpu(pid: int, seconds: float, *, children: bool) -> tuple[float, float]:
    """Return (percent of one core, RSS MiB) of `pid` over `seconds`."""
    before = cpu_seconds(pid, children=children)
    time.sleep(seconds)
    after = cpu_seconds(pid, children=children)
    return 100.0 * (after - before) / seconds, rss_mib(pid)


def detection_trials(bench: Bench, services: list[str], *, agent: bool) -> list[float]:
    """Kill one critical container per service on the master; return the detection latencies."""
    from mailcow_ha.adapters.engine import Engine

    latencies = []
    engine = Engine(bench.podman.base_url, request_timeout=10)
    deaths = DeathWatcher(engine, bench.project.name)
    monitor = AddressMonitor(bench.node.namespace.name, "192.0.2.1")
    try:
        time.sleep(0.5)
        for service in services:
            mark = bench.log_size()
            if not bench.node.is_master():
                bench.make_node_master()
                if agent:
                    bench.wait_for_log("verdict healthy: master: all probes pass", mark, "a healthy master")
            # A uniform phase over a whole 2 s polling period, so the naive script's latency is not biased.
            time.sleep(1.0 + secrets.randbelow(2000) / 1000)
            killed_mark = bench.log_size()
            bench.podman.podman("kill", "--signal", "KILL", bench.project.containers[service])
            _, died_at = deaths.deaths.get(timeout=10)
            left_at = monitor.removed.get(timeout=30)
            latencies.append(left_at - died_at)
            print(f"  {service}: keepalived left MASTER {left_at - died_at:.3f} s after the container died", flush=True)
            if agent and left_at - died_at > 1.0:
                print(bench.log_since(killed_mark), flush=True)
            wait(lambda: bench.vrrp.masters() == [bench.peer], 15, "the peer to take over")
            if agent:
                # The agent's demote stopped the containers; its next promote starts them again.
                bench.wait_for_log("verdict healthy: standby: all probes pass", mark, "a healthy standby")
            else:
                bench.podman.client.start(bench.project.containers[service])
                wait(
                    lambda: bench.node.health_file.read_text().strip() == "0", 30, "the naive script's healthy verdict"
                )
            while not deaths.deaths.empty():
                deaths.deaths.get_nowait()
    finally:
        monitor.close()
        deaths.close()
        engine.close()
    return latencies


def agent_failure(bench: Bench, signum: signal.Signals) -> float:
    """Make the agent fail on the master (SIGKILL: dead, SIGSTOP: hung) and time keepalived leaving MASTER."""
    if bench.agent is None or bench.agent.poll() is not None:
        mark = bench.log_size()
        bench.start_agent()
        bench.wait_for_log("agent running", mark, "the agent to start")
    mark = bench.log_size()
    if not bench.node.is_master():
        bench.make_node_master()
        bench.wait_for_log("verdict healthy: master: all probes pass", mark, "a healthy master")
    monitor = AddressMonitor(bench.node.namespace.name, "192.0.2.1")
    try:
        time.sleep(0.5)
        assert bench.agent is not None
        failed_at = time.time()
        os.kill(bench.agent.pid, signum)
        left_at = monitor.removed.get(timeout=60)
    finally:
        monitor.close()
    # After SIGSTOP the guardian kills the hung agent, so both end with a dead process to collect.
    bench.agent.wait(30)
    bench.agent = None
    print(f"  agent {signum.name}: keepalived left MASTER {left_at - failed_at:.3f} s later", flush=True)
    return left_at - failed_at


def summarize(name: str, latencies: list[float]) -> str:
    return (
        f"{name}: median {statistics.median(latencies):.3f} s, mean {statistics.mean(latencies):.3f} s, "
        f"min {min(latencies):.3f} s, max {max(latencies):.3f} s over {len(latencies)} deaths"
    )


def measure_naive(bench: Bench, seconds: float, services: list[str]) -> dict[str, Any]:
    """Measure the naive polling script's CPU, then its detection latency; it alone writes the track file."""
    bench.start_naive()
    wait(lambda: bench.node.health_file.read_text().strip() == "0", 30, "the naive script's first verdict")
    bench.make_node_master()
    assert bench.naive is not None
    print(f"naive script: measuring CPU for {seconds:g} s", flush=True)
    cpu, _ = measure_cpu(bench.naive.pid, seconds, children=True)
    latencies = detection_trials(bench, services, agent=False)
    bench.stop_naive()
    return {"naive_cpu": cpu, "naive_latencies": latencies}


def measure_agent(bench: Bench, seconds: float, services: list[str]) -> dict[str, Any]:
    """Measure the agent's CPU (and its guardian's) while idle, its detection latency, and its own failures."""
    bench.peer.set_health(1)
    offset = bench.log_size()
    bench.start_agent()
    bench.wait_for_log("verdict healthy: master: all probes pass", offset, "a healthy master")
    bench.peer.set_health(0)
    time.sleep(5.0)
    print(f"agent: measuring CPU for {seconds:g} s", flush=True)
    guardian = guardian_of(bench.agent_pid())
    guardian_before = cpu_seconds(guardian)
    cpu, rss = measure_cpu(bench.agent_pid(), seconds, children=False)
    return {
        "agent_cpu": cpu,
        "agent_rss": rss,
        "guardian_cpu": 100.0 * (cpu_seconds(guardian) - guardian_before) / seconds,
        "agent_latencies": detection_trials(bench, services, agent=True),
        "agent_killed": agent_failure(bench, signal.SIGKILL),
        "agent_hung": agent_failure(bench, signal.SIGSTOP),
    }


def report(results: dict[str, Any], seconds: float) -> None:
    print()
    cpu, rss = results["agent_cpu"], results["agent_rss"]
    print(f"agent CPU: {cpu:.3f} % of one core over {seconds:g} s, RSS {rss:.1f} MiB")
    print(f"guardian CPU: {results['guardian_cpu']:.3f} % of one core over the same time")
    print(f"naive script CPU: {results['naive_cpu']:.3f} % of one core over {seconds:g} s")
    print(summarize("agent detection", results["agent_latencies"]))
    print(f"agent killed (SIGKILL) on the master: keepalived left MASTER {results['agent_killed']:.3f} s later")
    print(f"agent hung (SIGSTOP) on the master: keepalived left MASTER {results['agent_hung']:.3f} s later")
    print(summarize("naive detection", results["naive_latencies"]))


def main() -> int:
    if len(sys.argv) >= 3 and sys.argv[1] == "node":
        return run_node(Path(sys.argv[2]))
    if len(sys.argv) >= 3 and sys.argv[1] == "naive":
        return run_naive(json.loads(sys.argv[2]), interval=2.0)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-seconds", type=float, default=60.0, help="length of each CPU measurement (s)")
    parser.add_argument("--trials", type=int, default=5, help="container deaths per program (at most 6)")
    args = parser.parse_args()
    from harness.loopdev import private_mount_namespace

    services = sorted(
        ["postfix-mailcow", "dovecot-mailcow", "nginx-mailcow", "php-fpm-mailcow", "rspamd-mailcow", "redis-mailcow"]
    )[: args.trials]
    with private_mount_namespace(), tempfile.TemporaryDirectory(prefix="mcha-bench-") as directory:
        workdir = Path(directory)
        os.chmod(workdir, 0o755)
        bench = Bench(workdir)
        try:
            results = measure_naive(bench, args.cpu_seconds, services)
            results.update(measure_agent(bench, args.cpu_seconds, services))
        except BaseException:
            log = workdir / "agent.log"
            if log.exists():
                print("--- last lines of the agent's log ---", file=sys.stderr)
                print("\n".join(log.read_text(errors="replace").splitlines()[-60:]), file=sys.stderr)
            raise
        finally:
            bench.close()
    report(results, args.cpu_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
