"""The invariants every scenario must keep, sampled every 100 ms, and the data checks after a fault.

Sampled (InvariantSampler): at most one node can write the shared volume, and mailcow's
containers run on at most one node that can. A node can write the volume while it has it
mounted through a device that the cloud has not detached. Once the API moved the volume away,
the old holder's I/O fails, as on Hetzner. Its leftover mount and containers then write nothing
until its demote removes them. Once one node has been keepalived's MASTER (the only node sending VRRP
adverts) for `route_bound` seconds and serves, every floating IP routes to it.
After a fault (Scenario.assert_invariants): every mail acknowledged before the fault is on the
shared volume, and every acknowledged Galera row is in the database.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lab.observe import LabView
from lab.shell import LabError

log = logging.getLogger(__name__)

SAMPLE_INTERVAL = 0.1


@dataclass(frozen=True)
class Violation:
    """One broken invariant at one sample."""

    time: float
    """Monotonic time of the sample."""
    rule: str
    detail: str


@dataclass
class RouteTracker:
    """Which node is MASTER, and since when, across samples; the state the route rule needs."""

    master: str | None = None
    since: float = 0.0


def check_view(
    view: LabView, masters: list[str], tracker: RouteTracker, public_ips: Mapping[str, str], route_bound: float
) -> list[Violation]:
    """Return the invariants one sample breaks, updating `tracker` with who is MASTER.

    `masters` are the nodes that sent VRRP adverts just before the sample.
    """
    violations = []
    writers = view.writable_on
    if len(writers) > 1:
        violations.append(
            Violation(view.monotonic, "single-mount", f"shared volume mounted and attached on {', '.join(writers)}")
        )
    serving = view.serving_unfenced
    if len(serving) > 1:
        violations.append(
            Violation(
                view.monotonic,
                "single-serving",
                f"mailcow containers run on {', '.join(serving)}, none of them on a detached volume",
            )
        )
    master = masters[0] if len(masters) == 1 else None
    if master != tracker.master:
        tracker.master, tracker.since = master, view.monotonic
    master_serves = master is not None and master in view.serving
    if master is not None and master_serves and view.monotonic - tracker.since > route_bound:
        expected = public_ips[master]
        for address, next_hop in view.floating_ip_routes.items():
            if next_hop != expected:
                detail = (
                    f"floating IP {address} routes to {next_hop or 'nowhere'} although {master} ({expected}) "
                    f"has been MASTER for {view.monotonic - tracker.since:.1f} s and serves"
                )
                violations.append(Violation(view.monotonic, "route-follows-master", detail))
    return violations


@dataclass
class InvariantSampler:
    """Samples the lab every 100 ms in a thread, keeping every view and every violation."""

    take_view: Callable[[], LabView]
    masters: Callable[[], list[str]]
    """Names of the nodes keepalived made MASTER, from the VRRP adverts on the wire."""
    public_ips: Mapping[str, str]
    """Node name -> its public address, where the router must send the floating IPs."""
    route_bound: float = 3.0
    interval: float = SAMPLE_INTERVAL
    views: list[LabView] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._tracker = RouteTracker()
        self._thread = threading.Thread(target=self._run, name="lab-invariant-sampler", daemon=True)

    def start(self) -> InvariantSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                view = self.take_view()
            except (LabError, OSError) as error:
                with self._lock:
                    self.errors.append(f"{started:.3f}: {error}")
                log.warning("invariant sample failed: %s", error)
            else:
                found = check_view(view, self.masters(), self._tracker, self.public_ips, self.route_bound)
                with self._lock:
                    self.views.append(view)
                    self.violations.extend(found)
                for violation in found:
                    log.error("invariant %s broken: %s", violation.rule, violation.detail)
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def snapshot(self) -> tuple[list[LabView], list[Violation]]:
        with self._lock:
            return list(self.views), list(self.violations)

    def max_gap(self) -> float:
        """Return the longest time between two samples, which must stay near the interval."""
        views, _ = self.snapshot()
        gaps = [later.monotonic - earlier.monotonic for earlier, later in itertools.pairwise(views)]
        return max(gaps, default=0.0)


def mail_ids_on_volume(spool: Path) -> set[str]:
    """Return the Message-IDs of the mails in the lab SMTP service's spool (`.../new`)."""
    found = set()
    for path in spool.iterdir():
        for line in path.read_text(errors="replace").splitlines():
            if line.lower().startswith("message-id:"):
                found.add(line.split(":", 1)[1].strip())
                break
            if not line:
                break
    return found


def missing(acknowledged: Iterable[str], present: set[str]) -> list[str]:
    """Return the acknowledged keys that are not present, in acknowledgement order."""
    return [key for key in acknowledged if key not in present]
