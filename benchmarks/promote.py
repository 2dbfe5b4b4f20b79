"""Measure promote end to end: from keepalived's MASTER to every critical container running and healthy.

Runs the real promote several times on one node: TransitionRunner, hcloud against the fake API
on loopback, a loop-device ext4 volume with multi-mount protection, and mailcow-like containers
in podman's Docker API. Between runs it demotes and hands the floating IP and the volume back
to the other server. The circuit breaker is reset before each run.

"overhead" is the time from `submit(MASTER)` to the promote's end, minus the two container steps
(starting the containers and waiting for their health checks), which measure the engine. It
covers the runner, the lock, the breaker, state files, the cloud step, the device wait, blkid
and dumpe2fs, mount and the marker check.

Needs root (loop devices, mount). Usage:
    .venv/bin/python benchmarks/promote.py --runs 5 --latency 0
    .venv/bin/python benchmarks/promote.py --runs 5 --latency 1.0
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness.failovernode import FailoverNode, failover_node
from harness.loopdev import private_mount_namespace
from harness.podman import PodmanService
from mailcow_ha.config import HetznerSettings
from mailcow_ha.failover.history import FailoverRecord, RecordKind
from mailcow_ha.failover.transitions import TransitionOutcome, VrrpState
from mailcow_ha.failover.wiring import build_runner

CONTAINER_STEPS = ("containers start", "containers healthy")
DEFAULT_POLL_INTERVAL = HetznerSettings.model_fields["poll_interval"].default


def run_once(node: FailoverNode, latency: float) -> dict[str, float]:
    failover = node.failover()
    finished = threading.Event()
    outcomes: list[TransitionOutcome] = []

    def on_outcome(outcome: TransitionOutcome) -> None:
        outcomes.append(outcome)
        finished.set()

    runner = build_runner(node.config, failover, on_outcome=on_outcome)
    failover.breaker.reset()
    node.env.fake.set_action_latency(None, latency)
    try:
        with node.health_driver(interval=0.1):
            submitted = time.time()
            runner.submit(VrrpState.MASTER)
            if not finished.wait(120):
                raise RuntimeError("promote did not finish within 120 s")
        outcome = outcomes[0]
        if not outcome.succeeded:
            raise RuntimeError(f"promote failed: {outcome.message}")
        record = _last_promote(node)
        steps = {step.name: step.seconds for step in record.steps}
        total = outcome.finished_at - submitted
        result = {
            "total": total,
            "overhead": total - sum(steps.get(name, 0.0) for name in CONTAINER_STEPS),
            "cloud": steps["cloud"],
            "floating IPs": steps["floating IPs"],
            "volume attach": steps["volume attach"],
            **{name: steps[name] for name in CONTAINER_STEPS},
            **{name: steps[name] for name in ("breaker", "device", "file system check", "mount", "marker")},
        }
    finally:
        node.env.fake.set_action_latency(None, 0.0)
        runner.submit(VrrpState.BACKUP)
        runner.wait_idle(120)
        runner.close(10)
        failover.close()
        _hand_back(node)
    return result


def _last_promote(node: FailoverNode) -> FailoverRecord:
    return next(record for record in reversed(node.history()) if record.kind is RecordKind.FAILOVER)


def _hand_back(node: FailoverNode) -> None:
    node.env.fake.set_volume_server(node.cluster.volume_id, node.other_server_id)
    for fip_id in node.cluster.floating_ip_ids:
        node.env.fake.set_floating_ip_server(fip_id, node.other_server_id)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="measured runs (default 5), after one warm-up run")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds every fake cloud action runs (default 0)")
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=DEFAULT_POLL_INTERVAL,
        help=f"hetzner.poll_interval in seconds (default: the config's default, {DEFAULT_POLL_INTERVAL})",
    )
    args = parser.parse_args()

    overrides = {"hetzner.poll_interval": args.poll_interval}
    with private_mount_namespace():
        podman = PodmanService.start()
        try:
            with failover_node(podman, overrides=overrides) as node:
                print(f"poll interval {node.config.hetzner.poll_interval} s, action latency {args.latency} s")
                run_once(node, args.latency)
                results = [run_once(node, args.latency) for _ in range(args.runs)]
        finally:
            podman.close()

    print(f"{'measure':<22}{'median (s)':>12}{'min (s)':>10}{'max (s)':>10}")
    for name in results[0]:
        values = [result[name] for result in results]
        print(f"{name:<22}{statistics.median(values):>12.3f}{min(values):>10.3f}{max(values):>10.3f}")
    slower = [max(result["floating IPs"], result["volume attach"]) for result in results]
    excess = [result["cloud"] - slow for result, slow in zip(results, slower, strict=True)]
    print(f"{'cloud - slower move':<22}{statistics.median(excess):>12.3f}{min(excess):>10.3f}{max(excess):>10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
