"""Measure what alerting costs a caller, and how a flood is handled, through Apprise's json:// scheme.

A loopback HTTP receiver (tests/harness/alertreceiver.py) records what arrives. Three cases:
- one alert: send() time in the caller, and the time until the receiver has it;
- a flood of N identical alerts: send() time per call, the time until the queue is handled,
  and how many messages arrive (one, then a digest when the interval ends);
- N alerts with N different subjects: each is its own rate-limit key, so each is delivered.

    .venv/bin/python benchmarks/alerts_flood.py [--count 1000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness.alertreceiver import AlertReceiver
from mailcow_ha.adapters.alerts import AppriseAlerter
from mailcow_ha.alert_events import AlertEvent


def timed_sends(alerter: AppriseAlerter, count: int, *, distinct: bool) -> list[float]:
    durations = []
    for number in range(count):
        details = {"subject": f"resource {number}"} if distinct else None
        started = time.perf_counter()
        alerter.send(AlertEvent.DRIFT, f"benchmark alert {number}", details)
        durations.append(time.perf_counter() - started)
    return durations


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()

    with AlertReceiver() as receiver, tempfile.TemporaryDirectory(prefix="mcha-alert-bench-") as directory:
        state_dir = Path(directory)
        url = [SecretStr(receiver.json_url("bench"))]

        alerter = AppriseAlerter("bench", "node-1", url, state_dir / "one", repeat_interval=600, queue_size=4096)
        started = time.perf_counter()
        alerter.send(AlertEvent.FAILOVER_STARTED, "one alert")
        sent = time.perf_counter() - started
        receiver.wait_for(1, timeout=10)
        delivered = time.perf_counter() - started
        alerter.close()
        print(f"one alert: send() {sent * 1e6:.0f} us, delivered after {delivered * 1000:.1f} ms")

        flood = AppriseAlerter("bench", "node-1", url, state_dir / "flood", repeat_interval=600, queue_size=4096)
        before = len(receiver.received)
        started = time.perf_counter()
        durations = timed_sends(flood, args.count, distinct=False)
        flood.flush(60)
        handled = time.perf_counter() - started
        flood.close()
        arrived = len(receiver.received) - before
        print(
            f"flood of {args.count} identical: send() median {statistics.median(durations) * 1e6:.0f} us, "
            f"max {max(durations) * 1e6:.0f} us; all handled after {handled:.3f} s; {arrived} message(s) arrived"
        )

        distinct = AppriseAlerter("bench", "node-1", url, state_dir / "distinct", repeat_interval=600, queue_size=4096)
        before = len(receiver.received)
        started = time.perf_counter()
        durations = timed_sends(distinct, args.count, distinct=True)
        distinct.flush(300)
        handled = time.perf_counter() - started
        distinct.close()
        arrived = len(receiver.received) - before
        print(
            f"{args.count} distinct subjects: send() median {statistics.median(durations) * 1e6:.0f} us, "
            f"max {max(durations) * 1e6:.0f} us; all delivered after {handled:.2f} s "
            f"({arrived / handled:.0f} messages/s); {arrived} message(s) arrived"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
