"""Failover time in the lab, per fault, split into phases; and the lab's peak memory.

    .venv/bin/python benchmarks/lab_failover.py [--nodes 3] [--runs 3] [--action-latency 0]
                                                [--faults container-crash,power-off]

Brings one lab up (root needed), then for each fault and run: restores the cluster to
one serving master, injects the fault on the master and waits until the client is served
again through the floating IP. Prints each run's phases (detection, election, cloud moves,
mount, container start, total), the median and max of each, and the peak memory of the whole
lab (resident set of every node process, container and the fake cloud, sampled every 0.5 s).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "tests"), str(Path(__file__).resolve().parents[1] / "infra")]

from lab import faults  # noqa: E402
from lab.cluster import Lab, LabOptions  # noqa: E402
from lab.restore import restore  # noqa: E402
from lab.scenario import Scenario  # noqa: E402

PHASES = ("detection", "election", "cloud moves", "mount", "container start", "total")


def lab_rss_bytes(lab: Lab) -> int:
    """Sum the resident memory of every process in the lab's nodes, their containers and the cloud."""
    namespaces = {node.machine.pid_namespace for node in lab.nodes.values()} - {None}
    pids: set[int] = set()
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
            namespace = os.readlink(f"/proc/{entry.name}/ns/pid")
            command = Path(f"/proc/{entry.name}/cmdline").read_bytes()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
        if namespace in namespaces or (b"lab.cloudhost" in command and lab.lab_id.encode() in command):
            pids.add(int(entry.name))
    # A container's processes are in its own PID namespace below its conmon.
    changed = True
    while changed:
        found = {pid for pid, parent in parents.items() if parent in pids} - pids
        changed = bool(found)
        pids |= found
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


class MemorySampler:
    def __init__(self, lab: Lab, interval: float = 0.5) -> None:
        self.lab = lab
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, lab_rss_bytes(self.lab))
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *args: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def one_run(lab: Lab, fault: str) -> dict[str, float | None]:
    restore(lab)
    with Scenario(lab, f"benchmark-{fault}") as scenario:
        master = scenario.wait_for_service()
        time.sleep(1.0)
        if fault == "container-crash":
            fault_at = scenario.inject(fault, lambda: faults.crash_container(master))
        else:
            fault_at = scenario.inject(fault, lambda: faults.power_off(lab, master))
        scenario.wait_for_new_master(master, timeout=120)
        time.sleep(0.5)
        timeline = scenario.timeline(fault, fault, fault_at, master)
        if scenario.violations():
            raise SystemExit(f"{fault}: invariants broken: {scenario.violations()[:3]}")
    print(timeline.render(), flush=True)
    return timeline.phases()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, choices=[3, 5], default=3, help="lab size (default 3)")
    parser.add_argument("--runs", type=int, default=3, help="runs per fault (default 3)")
    parser.add_argument("--action-latency", type=float, default=0.0, help="seconds each cloud action runs")
    parser.add_argument("--faults", default="container-crash,power-off", help="comma-separated faults")
    args = parser.parse_args()

    lab = Lab.create(LabOptions(nodes=args.nodes, action_latency=args.action_latency))
    results: dict[str, list[dict[str, float | None]]] = {}
    try:
        with MemorySampler(lab) as memory:
            started = time.monotonic()
            lab.up()
            up_seconds = time.monotonic() - started
            for fault in args.faults.split(","):
                results[fault] = [one_run(lab, fault) for _ in range(args.runs)]
    finally:
        lab.down()

    print(f"\n{args.nodes} nodes; lab up: {up_seconds:.1f} s; peak memory of the lab: {memory.peak / 2**20:.0f} MiB")
    print(f"action latency {args.action_latency:g} s, {args.runs} run(s) per fault; median / max in seconds")
    print("| fault | " + " | ".join(PHASES) + " |")
    print("|---|" + "---|" * len(PHASES))
    for fault, runs in results.items():
        cells = []
        for phase in PHASES:
            values = [value for run in runs if (value := run[phase]) is not None]
            cells.append(f"{statistics.median(values):.2f} / {max(values):.2f}" if values else "-")
        print(f"| {fault} | " + " | ".join(cells) + " |")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
