"""A failover's timeline, from the fault to the client being served again, with durations.

Every mark comes from outside the nodes: the sampled views (health file, mounts, containers),
the VRRP adverts on the wire, the fake cloud's hook records (converted from wall-clock to
monotonic time) and the mail client's attempts. A mark that never happened is shown as `-`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lab.observe import LabView
from lab.traffic import Attempt
from lab.vrrp import Advert


@dataclass(frozen=True)
class Mark:
    """One step of a failover."""

    label: str
    at: float | None
    """Monotonic time, or None when the step did not happen."""
    detail: str = ""


@dataclass(frozen=True)
class Timeline:
    """The marks of one failover, in the order a failover goes through them."""

    title: str
    fault_at: float
    marks: tuple[Mark, ...]

    def mark(self, label: str) -> Mark:
        return next(mark for mark in self.marks if mark.label == label)

    def since_fault(self, label: str) -> float | None:
        at = self.mark(label).at
        return None if at is None else at - self.fault_at

    def phases(self) -> dict[str, float | None]:
        """Return the failover split into detection, election, cloud moves, mount and container start."""

        def between(start: str, end: str) -> float | None:
            first, last = self.mark(start).at, self.mark(end).at
            return None if first is None or last is None else round(last - first, 3)

        cloud_end = _latest(self.mark("floating IP moved").at, self.mark("volume moved").at)
        elected = self.mark("new MASTER").at
        detected = "detection" if self.mark("detection").at is not None else "fault"
        return {
            "detection": between("fault", "detection"),
            "election": between(detected, "new MASTER"),
            "cloud moves": None if cloud_end is None or elected is None else round(cloud_end - elected, 3),
            "mount": between("volume moved", "mounted"),
            "container start": between("mounted", "containers running"),
            "total": between("fault", "client served again"),
        }

    def render(self) -> str:
        lines = [self.title]
        previous = self.fault_at
        for mark in self.marks:
            if mark.at is None:
                lines.append(f"  {'-':>8}  {'':>8}  {mark.label}{': ' + mark.detail if mark.detail else ''}")
                continue
            lines.append(
                f"  {mark.at - self.fault_at:+7.2f}s  {mark.at - previous:+7.2f}s  {mark.label}"
                + (f": {mark.detail}" if mark.detail else "")
            )
            previous = mark.at
        return "\n".join(lines)


def _latest(*moments: float | None) -> float | None:
    known = [moment for moment in moments if moment is not None]
    return max(known) if len(known) == len(moments) else None


def build_timeline(
    *,
    title: str,
    fault: str,
    fault_at: float,
    old_master: str,
    views: Sequence[LabView],
    adverts: Iterable[Advert],
    hook_events: Iterable[Mapping[str, Any]],
    mail_attempts: Sequence[Attempt],
    private_ips: Mapping[str, str],
    public_ips: Mapping[str, str],
    shared_volume_id: int,
    critical_containers: int,
    detected_at: float | None = None,
) -> Timeline:
    """Assemble the marks of the failover that followed a fault on `old_master`."""
    after = [view for view in views if view.monotonic >= fault_at]
    names_by_private_ip = {address: name for name, address in private_ips.items()}
    names_by_public_ip = {address: name for name, address in public_ips.items()}

    if detected_at is None:
        detection = next((view for view in after if view.node(old_master).health not in (None, "0")), None)
        detected_at = detection.monotonic if detection else None
    fault_state = next(
        (advert for advert in adverts if advert.time >= fault_at and advert.priority == 0
         and names_by_private_ip.get(advert.source) == old_master),
        None,
    )  # fmt: skip
    if fault_state is not None:
        # keepalived reacts to the track file at once (inotify), faster than the sampler: its FAULT
        # advert proves the file had changed by then, also when no sample caught the change.
        detected_at = fault_state.time if detected_at is None else min(detected_at, fault_state.time)
    new_master = next(
        (advert for advert in adverts if advert.time >= fault_at and advert.priority > 0
         and names_by_private_ip.get(advert.source) not in (None, old_master)),
        None,
    )  # fmt: skip
    new_name = names_by_private_ip.get(new_master.source) if new_master else None

    offset = _wall_to_monotonic(views)
    floating = _hook_mark(hook_events, offset, fault_at, "floating_ip.assigned", lambda e: e.get("next_hop"))
    volume = _hook_mark(
        hook_events, offset, fault_at, "volume.attached",
        lambda e: e.get("node") if e.get("volume") == shared_volume_id else None,
    )  # fmt: skip
    mounted = next((view for view in after if view.mounted_on and view.mounted_on[0] != old_master), None)
    running = next(
        (view for view in after
         if len(view.serving) == 1 and view.serving[0] != old_master
         and len(view.node(view.serving[0]).containers) >= critical_containers),
        None,
    )  # fmt: skip
    served = next((attempt for attempt in mail_attempts if attempt.ok and attempt.started >= fault_at), None)

    marks = (
        Mark("fault", fault_at, f"{fault} on {old_master}"),
        Mark("detection", detected_at, f"health of {old_master} is no longer 0"),
        Mark("FAULT", fault_state.time if fault_state else None, f"{old_master} sent its priority-0 advert"),
        Mark("new MASTER", new_master.time if new_master else None, f"{new_name} advertises" if new_name else ""),
        Mark("floating IP moved", floating[0], f"routed to {names_by_public_ip.get(str(floating[1]), floating[1])}"),
        Mark("volume moved", volume[0], f"attached to {volume[1]}" if volume[1] else ""),
        Mark("mounted", mounted.monotonic if mounted else None, f"on {mounted.mounted_on[0]}" if mounted else ""),
        Mark(
            "containers running", running.monotonic if running else None, f"on {running.serving[0]}" if running else ""
        ),
        Mark("client served again", served.finished if served else None, "SMTP through the floating IP"),
    )
    return Timeline(title, fault_at, marks)


def _wall_to_monotonic(views: Sequence[LabView]) -> float:
    """Return what to add to a wall-clock time to get the monotonic time the samples use."""
    if not views:
        return 0.0
    return views[-1].monotonic - views[-1].time


def _hook_mark(
    events: Iterable[Mapping[str, Any]], offset: float, fault_at: float, kind: str, target: Any
) -> tuple[float | None, Any]:
    for event in events:
        if event.get("kind") != kind or "error" in event:
            continue
        at = float(event["time"]) + offset
        value = target(event)
        if at >= fault_at and value is not None:
            return at, value
    return None, None
