"""Measure Galera recovery after a total outage and the database backup, on a real 3-member cluster.

For each run the script fills a table, crashes all three members (SIGKILL, one after another),
then times `galera_ops.collect_reports` (grastate.dat and `mariadbd --wsrep-recover` on each
member) and `galera_ops.run_bootstrap` until every member is Synced. It also times
`backup.dump_database` and `backup.restore_database` of a table of ROWS rows. Needs root.

    .venv/bin/python benchmarks/galera_recovery.py --runs 3 --rows 100000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness.galera import MARIADBD, GaleraCluster, GaleraNode, galera_available
from harness.nodeconfig import deep_update, node_config_dict
from mailcow_ha.config import GaleraSettings, parse_config
from mailcow_ha.mailcow import backup, galera_ops

SCHEMA = "bench_mailcow"


class _Control:
    def __init__(self, node: GaleraNode) -> None:
        self.node = node

    def start(self, *, bootstrap: bool, timeout: float) -> None:
        self.node.start(bootstrap=bootstrap, wait=False)


def members(cluster: GaleraCluster) -> dict[str, galera_ops.LocalMember]:
    return {
        node.name: galera_ops.LocalMember(
            node.name,
            GaleraSettings(
                socket=node.socket,
                data_dir=node.data_dir,
                defaults_file=node.option_file,
                mariadbd=MARIADBD,
                password="unused",
                cluster_name=cluster.name,
            ),
            _Control(node),
            poll_interval=0.1,
        )
        for node in cluster.nodes
    }


def fill(node: GaleraNode, rows: int) -> None:
    node.execute(
        f"CREATE DATABASE IF NOT EXISTS {SCHEMA}",
        f"CREATE TABLE IF NOT EXISTS {SCHEMA}.messages (id INT AUTO_INCREMENT PRIMARY KEY, body VARCHAR(200))",
        f"TRUNCATE {SCHEMA}.messages",
        f"USE {SCHEMA}",
        f"INSERT INTO {SCHEMA}.messages (body) SELECT REPEAT('x', 200) FROM seq_1_to_{rows}",
        timeout=600,
    )


def crash_all(cluster: GaleraCluster) -> None:
    for node in cluster.nodes:
        node.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=100000)
    args = parser.parse_args()
    reason = galera_available()
    if reason is not None:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 1

    cluster = GaleraCluster(3)
    timings: dict[str, list[float]] = {"positions": [], "bootstrap": [], "dump": [], "restore": []}
    try:
        cluster.start()
        order = [galera_ops.Member(node.name, node.index) for node in cluster.nodes]
        for _ in range(args.runs):
            fill(cluster.nodes[0], args.rows)
            with tempfile.TemporaryDirectory() as work:
                document = deep_update(node_config_dict(), "galera.socket", str(cluster.nodes[1].socket))
                config = parse_config(deep_update(document, "mailcow", {"db_name": SCHEMA}))
                started = time.monotonic()
                result = backup.run_backup(config, Path(work), mail=False)
                timings["dump"].append(time.monotonic() - started)
                started = time.monotonic()
                backup.restore_database(config, result.directory)
                timings["restore"].append(time.monotonic() - started)

            crash_all(cluster)
            transport = galera_ops.DirectTransport({name: member.handle for name, member in members(cluster).items()})
            started = time.monotonic()
            galera_ops.collect_reports(order, transport)
            timings["positions"].append(time.monotonic() - started)
            started = time.monotonic()
            galera_ops.run_bootstrap(order, transport, start_timeout=300)
            cluster.wait_healthy(timeout=120)
            timings["bootstrap"].append(time.monotonic() - started)
    finally:
        cluster.close()

    print(f"rows {args.rows}, runs {args.runs}")
    print("| step | median (s) | max (s) |")
    print("|---|---|---|")
    for step, values in timings.items():
        print(f"| {step} | {statistics.median(values):.2f} | {max(values):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
