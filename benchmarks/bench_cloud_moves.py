"""Measure the cloud half of promote: assign the floating IP and move the shared volume in parallel.

Runs the Hetzner adapter against the fake API on loopback, in two settings:
- zero action latency: the adapter's own cost per promote (HTTP round trips, polling, threads);
- a fixed latency per action: the total against the slower branch (volume detach + attach) and
  against running both branches one after the other.

    .venv/bin/python benchmarks/bench_cloud_moves.py [--runs 20] [--latency 1.0] [--poll-interval 0.2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness.fakecloud.testing import FakeCloudEnv, FakeCluster, serve_fake
from harness.nodeconfig import node_config_dict
from mailcow_ha.adapters.hetzner import HetznerCloud
from mailcow_ha.config import HetznerSettings, parse_config
from mailcow_ha.deadline import Deadline


def make_adapter(env: FakeCloudEnv, cluster: FakeCluster, poll_interval: float) -> HetznerCloud:
    section = env.hetzner_section(cluster, 2, poll_interval=poll_interval)
    return HetznerCloud(parse_config(node_config_dict(hetzner=section)).hetzner)


def reset(env: FakeCloudEnv, cluster: FakeCluster) -> None:
    env.fake.set_volume_server(cluster.volume_id, cluster.server_ids[0])
    env.fake.set_floating_ip_server(cluster.floating_ip_ids[0], cluster.server_ids[0])


def both_in_parallel(cloud: HetznerCloud, cluster: FakeCluster) -> float:
    target = cluster.server_ids[1]
    steps: list[Callable[[], None]] = [
        lambda: cloud.assign_floating_ips(target, Deadline.after("assign", 30), lambda: None),
        lambda: cloud.move_volume_here(cluster.volume_id, target, Deadline.after("move", 30), lambda: None),
    ]
    threads = [threading.Thread(target=step) for step in steps]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def one_after_other(cloud: HetznerCloud, cluster: FakeCluster) -> float:
    target = cluster.server_ids[1]
    started = time.perf_counter()
    cloud.assign_floating_ips(target, Deadline.after("assign", 30), lambda: None)
    cloud.move_volume_here(cluster.volume_id, target, Deadline.after("move", 30), lambda: None)
    return time.perf_counter() - started


def measure(
    latency: float, runs: int, poll_interval: float, run: Callable[[HetznerCloud, FakeCluster], float]
) -> tuple[list[float], float]:
    with serve_fake(action_latency=latency) as env:
        cluster = env.cluster()
        cloud = make_adapter(env, cluster, poll_interval)
        reset(env, cluster)
        run(cloud, cluster)  # warm-up: imports, connections, one client per thread
        times: list[float] = []
        mark = env.fake.requests.mark()
        for _ in range(runs):
            reset(env, cluster)
            times.append(run(cloud, cluster))
        requests = sum(env.fake.requests.counts(mark).values()) / runs
    return times, requests


def summary(name: str, times: list[float], requests: float) -> str:
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return f"| {name} | {statistics.median(times):.3f} | {p90:.3f} | {max(times):.3f} | {requests:.1f} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="measured runs per setting (default 20)")
    parser.add_argument("--latency", type=float, default=1.0, help="seconds every action runs (default 1.0)")
    default_poll = HetznerSettings.model_fields["poll_interval"].default
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=default_poll,
        help=f"seconds between two reads of a running action, hetzner.poll_interval (default {default_poll})",
    )
    args = parser.parse_args()

    print("| setting | median s | p90 s | max s | API requests per run |")
    print("|---|---|---|---|---|")
    times, requests = measure(0.0, args.runs, args.poll_interval, both_in_parallel)
    print(summary("zero latency, parallel", times, requests))
    slow_runs = max(3, args.runs // 4)
    times, requests = measure(args.latency, slow_runs, args.poll_interval, both_in_parallel)
    print(summary(f"{args.latency:g} s per action, parallel", times, requests))
    times, requests = measure(args.latency, slow_runs, args.poll_interval, one_after_other)
    print(summary(f"{args.latency:g} s per action, one after the other", times, requests))
    print(f"\nslower branch (detach + attach) at {args.latency:g} s per action: {2 * args.latency:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
