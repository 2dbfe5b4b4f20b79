"""Time the Pulumi program's check against the running cluster, under Pulumi's mocks.

The program reads the cluster's servers, shared volume and floating IPs through the API before it
declares anything, when `hcloud:token` is set. This script serves the fake Hetzner API on
loopback with a deployed 9-node cluster in it, and runs the program (tests/infra/program_driver.py,
one process per run) with and without `hcloud:token`. The difference of the evaluation times is
the check's cost: three list requests and the import of the hcloud client. Against the real API
each request also pays the network round trip.

Usage: .venv/bin/python benchmarks/infra_check.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPOSITORY / "tests"), str(REPOSITORY / "infra")]

from harness.fakecloud.testing import FakeCloudEnv, serve_fake  # noqa: E402

DRIVER = REPOSITORY / "tests/infra/program_driver.py"
NODES = 9
CLUSTER = "mailcow-bench"
CONFIG = {
    "mailcow-ha:mailHostname": "mail.example.org",
    "mailcow-ha:runtimeRepository": "https://git.example.org/ops/mailcow-ha.git",
    "mailcow-ha:runtimeRef": "c" * 40,
    "mailcow-ha:hcloudToken": "benchmark-token",
    "mailcow-ha:floatingIpv6": "true",
    "mailcow-ha:nodeCount": str(NODES),
}


def deploy(env: FakeCloudEnv) -> None:
    """Create a deployed cluster's servers, shared volume and floating IPs in the fake."""
    network = env.fake.create_network(f"{CLUSTER}-network", "10.0.0.0/16", subnet="10.0.1.0/24")
    servers = [
        env.fake.create_server(
            f"{CLUSTER}-{index}",
            labels={"cluster": CLUSTER, "role": "node", "node": str(index)},
            network_id=network.id,
            private_ip=f"10.0.1.{10 + index}",
        ).id
        for index in range(1, NODES + 1)
    ]
    env.fake.create_volume(
        f"{CLUSTER}-shared-data", server_id=servers[0], labels={"cluster": CLUSTER, "role": "shared-data"}
    )
    for kind in ("ipv4", "ipv6"):
        env.fake.create_floating_ip(f"{CLUSTER}-{kind}", type=kind, server_id=servers[0], labels={"cluster": CLUSTER})


def evaluation_seconds(extra: dict[str, str]) -> float:
    request = {
        "stack": "bench",
        "config": {**CONFIG, **extra},
        "secret_keys": ["mailcow-ha:hcloudToken", "hcloud:token"],
    }
    completed = subprocess.run(
        [sys.executable, str(DRIVER), json.dumps(request)], capture_output=True, text=True, timeout=300, check=True
    )
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    if "error" in result:
        raise SystemExit(f"program failed: {result['error']}")
    return float(result["evaluation_seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs per setting (default: 10)")
    args = parser.parse_args()

    with serve_fake() as env:
        deploy(env)
        settings = {
            "without hcloud:token": {},
            "with hcloud:token": {"hcloud:token": env.token, "hcloud:endpoint": env.url},
        }
        print("| setting | evaluation median (s) | evaluation max (s) |")
        print("|---|---|---|")
        for name, extra in settings.items():
            runs = [evaluation_seconds(extra) for _ in range(args.runs)]
            print(f"| {name} | {statistics.median(runs):.3f} | {max(runs):.3f} |")


if __name__ == "__main__":
    main()
