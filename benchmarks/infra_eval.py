"""Time the Pulumi program's evaluation under Pulumi's mocks for 3 and 9 nodes.

Each run is a fresh process (the program registers into one root stack per process), driven by
tests/infra/program_driver.py. Two figures per node count: the evaluation inside the process
(validation, rendering every node's user data, registering resources, resolving outputs) and
the wall time of the whole process (interpreter start and imports included).

Usage: .venv/bin/python benchmarks/infra_eval.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
DRIVER = REPOSITORY / "tests/infra/program_driver.py"
CONFIG = {
    "mailcow-ha:mailHostname": "mail.example.org",
    "mailcow-ha:runtimeRepository": "https://git.example.org/ops/mailcow-ha.git",
    "mailcow-ha:runtimeRef": "c" * 40,
    "mailcow-ha:hcloudToken": "benchmark-token",
    "mailcow-ha:floatingIpv6": "true",
}


def run_once(node_count: int) -> tuple[float, float, int]:
    """Return (evaluation seconds, process wall seconds, resource count) of one run."""
    request = {
        "stack": "bench",
        "config": {**CONFIG, "mailcow-ha:nodeCount": str(node_count)},
        "secret_keys": ["mailcow-ha:hcloudToken"],
    }
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, str(DRIVER), json.dumps(request)], capture_output=True, text=True, timeout=300, check=True
    )
    wall = time.perf_counter() - started
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    if "error" in result:
        raise SystemExit(f"program failed for {node_count} nodes: {result['error']}")
    return result["evaluation_seconds"], wall, len(result["resources"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per node count (default: 5)")
    args = parser.parse_args()

    print("| nodes | resources | evaluation median (s) | evaluation max (s) | process wall median (s) |")
    print("|---|---|---|---|---|")
    for node_count in (3, 9):
        runs = [run_once(node_count) for _ in range(args.runs)]
        evaluations = [run[0] for run in runs]
        walls = [run[1] for run in runs]
        print(
            f"| {node_count} | {runs[0][2]} | {statistics.median(evaluations):.3f} | {max(evaluations):.3f} "
            f"| {statistics.median(walls):.3f} |"
        )


if __name__ == "__main__":
    main()
