"""One scenario on a running lab: traffic and observers around a fault, then the verdict.

    with Scenario(lab, "container-crash", artifacts) as scenario:
        master = scenario.wait_for_service()
        fault_at = scenario.inject("container crash", lambda: faults.crash_container(master))
        new_master = scenario.wait_for_new_master(master, timeout=30)
        timeline = scenario.timeline("container crash", fault_at, master)
        scenario.assert_invariants(before=fault_at)

On a failure inside the block, the scenario copies every node's logs (agent, keepalived,
MariaDB, podman), the fake cloud's logs and event records, and its own samples, violations
and attempts into `<artifacts>/<name>/`.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from types import TracebackType
from typing import Any

from lab import cloudhost
from lab.cluster import Lab
from lab.faults import wait_for
from lab.invariants import InvariantSampler, Violation, mail_ids_on_volume, missing
from lab.labnode import LabNode
from lab.nodeconfig import PROJECT_NAME
from lab.shell import LabError
from lab.timeline import Timeline, build_timeline
from lab.traffic import DatabaseWriter, MailClient
from lab.vrrp import VrrpWatcher
from mailcow_ha.failover.history import FailoverRecord, HistoryStore, RecordKind, RecordOutcome

log = logging.getLogger(__name__)

SPOOL = Path(PROJECT_NAME) / "vmail-vol-1" / "lab" / "new"
"""Where the lab's SMTP service keeps accepted mails, below the shared volume's mount point."""


class HealthWatcher:
    """Reads every node's keepalived track file every 20 ms and records each change."""

    def __init__(self, lab: Lab, interval: float = 0.02) -> None:
        self.lab = lab
        self.interval = interval
        self.changes: list[tuple[float, str, str | None]] = []
        """(monotonic time, node, new content) for every change seen."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lab-health-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        last: dict[str, str | None] = {}
        while not self._stop.is_set():
            for node in list(self.lab.nodes.values()):
                try:
                    value: str | None = node.machine.path(node.config.paths.health_file).read_text().strip()
                except (OSError, LabError):
                    value = None
                if node.name not in last or last[node.name] != value:
                    last[node.name] = value
                    self.changes.append((time.monotonic(), node.name, value))
            self._stop.wait(self.interval)

    def first_unhealthy(self, node: str, since: float) -> float | None:
        """Return when `node`'s track file first left 0 after `since`, or None."""
        return next(
            (at for at, name, value in list(self.changes) if name == node and at >= since and value not in (None, "0")),
            None,
        )


class Scenario:
    """Traffic, observers and the invariant checks around one fault."""

    def __init__(self, lab: Lab, name: str, artifacts: Path | None = None, *, route_bound: float = 3.0) -> None:
        self.lab = lab
        self.name = name
        self.artifacts = artifacts
        address = lab.floating_addresses()[0]
        self.mail = MailClient(lab.network.client_ns, address)
        self.writer = DatabaseWriter(lab.network.ops_ns, self._database_targets, lab.secrets.galera_password)
        self.vrrp = VrrpWatcher(lab.network.private_ns)
        self.health = HealthWatcher(lab)
        self.public_ips = {node.name: node.server.public_ip for node in lab.nodes.values()}
        names_by_private_ip = {node.server.private_ip: node.name for node in lab.nodes.values()}

        def vrrp_masters() -> list[str]:
            return [names_by_private_ip.get(source, source) for source in self.vrrp.masters()]

        self.sampler = InvariantSampler(lab.view, vrrp_masters, self.public_ips, route_bound=route_bound)
        self.notes: list[str] = []

    def __enter__(self) -> Scenario:
        self._log_offsets = {node.name: _size(node.machine.log_dir / "agent.log") for node in self.lab.nodes.values()}
        started: list[Any] = []
        try:
            for part in (self.vrrp, self.health, self.sampler, self.mail, self.writer):
                part.start()
                started.append(part)
        except BaseException:
            # __exit__ does not run when __enter__ fails, so the threads started so far stop here.
            for part in reversed(started):
                part.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.mail.stop()
        self.writer.stop()
        self.sampler.stop()
        self.health.stop()
        self.vrrp.stop()
        if error is not None:
            self.keep_artifacts(f"{kind.__name__ if kind else 'error'}: {error}")

    # --- who serves --------------------------------------------------------------------------

    def serving(self) -> list[LabNode]:
        view = self.lab.view()
        return [self.lab.node_by_name(name) for name in view.serving]

    def _database_targets(self) -> list[str]:
        serving = [node.server.private_ip for node in self.serving()]
        others = [node.server.private_ip for node in self.lab.nodes.values() if node.server.private_ip not in serving]
        return serving + others

    def wait_for_service(self, timeout: float = 60.0) -> LabNode:
        """Wait until exactly one node runs every critical container and a mail got through; return it."""
        since = time.monotonic()
        critical = len(next(iter(self.lab.nodes.values())).config.mailcow.critical_services)

        def one_master_serving() -> LabNode | None:
            view = self.lab.view()
            if len(view.serving) != 1 or len(view.node(view.serving[0]).containers) < critical:
                return None
            if self.mail.first_success_after(since) is None:
                return None
            return self.lab.node_by_name(view.serving[0])

        return wait_for(one_master_serving, timeout, "one node serving mail through the floating IP")

    def wait_for_new_master(self, old: LabNode, timeout: float) -> LabNode:
        """Wait until a node other than `old` serves and the client got a mail through after the fault."""
        since = time.monotonic()
        critical = len(old.config.mailcow.critical_services)

        def other_node_serving() -> LabNode | None:
            view = self.lab.view()
            if view.serving != [name for name in view.serving if name != old.name] or len(view.serving) != 1:
                return None
            if len(view.node(view.serving[0]).containers) < critical or self.mail.first_success_after(since) is None:
                return None
            return self.lab.node_by_name(view.serving[0])

        return wait_for(other_node_serving, timeout, f"a node other than {old.name} serving mail")

    def wait_for_release(self, old: LabNode, timeout: float = 60.0) -> None:
        """Wait until `old` runs no mailcow container and has no mount of the shared volume left.

        A fenced old master (the cloud detached the volume from it) keeps both until its own demote,
        which follows its loss of Galera quorum, or of keepalived, by a few seconds.
        """

        def released() -> bool:
            view = self.lab.view()
            return old.name not in view.serving and old.name not in view.mounted_on

        wait_for(released, timeout, f"{old.name} to stop serving and unmount the shared volume")

    # --- faults and verdicts -----------------------------------------------------------------

    def inject(self, label: str, action: Callable[[], object]) -> float:
        """Run a fault and return the monotonic time just before it."""
        fault_at = time.monotonic()
        action()
        self.notes.append(f"{fault_at:.3f} fault: {label}")
        log.info("scenario %s: fault %s injected", self.name, label)
        return fault_at

    def timeline(self, title: str, fault: str, fault_at: float, old_master: LabNode) -> Timeline:
        views, _ = self.sampler.snapshot()
        critical = len(old_master.config.mailcow.critical_services)
        return build_timeline(
            title=title,
            fault=fault,
            fault_at=fault_at,
            old_master=old_master.name,
            views=views,
            adverts=self.vrrp.adverts(),
            hook_events=cloudhost.read_hook_events(self.lab.lab_dir),
            mail_attempts=self.mail.attempts(),
            private_ips={node.name: node.server.private_ip for node in self.lab.nodes.values()},
            public_ips=self.public_ips,
            shared_volume_id=self.lab.require_layout().shared_volume_id,
            critical_containers=critical,
            detected_at=self.health.first_unhealthy(old_master.name, fault_at),
        )

    def agent_lines(self, text: str) -> list[tuple[str, str]]:
        """Return (node, line) for every agent log line since the scenario began that contains `text`."""
        found = []
        for node in self.lab.nodes.values():
            path = node.machine.log_dir / "agent.log"
            try:
                with path.open("rb") as stream:
                    stream.seek(self._log_offsets.get(node.name, 0))
                    lines = stream.read().decode("utf-8", "replace").splitlines()
            except FileNotFoundError:
                continue
            found += [(node.name, line) for line in lines if text in line]
        return found

    def alerts(self, event: str) -> list[tuple[str, str]]:
        """Return the alerts of kind `event` (such as `quorum-lost`) the agents sent since the scenario began.

        The lab configures no alert URL, so the agents' log lines are where alerts show.
        """
        return self.agent_lines(f"alert {event}")

    def volume_attachments_since(self, moment: float) -> list[dict[str, Any]]:
        """Return the fake cloud's shared-volume attachments that happened after monotonic `moment`."""
        offset = time.monotonic() - time.time()
        shared = self.lab.require_layout().shared_volume_id
        return [
            event
            for event in cloudhost.read_hook_events(self.lab.lab_dir)
            if event.get("kind") == "volume.attached" and event.get("volume") == shared
            and float(event["time"]) + offset >= moment
        ]  # fmt: skip

    def handover(self, new_master: LabNode, timeout: float = 30.0) -> dict[str, str]:
        """Return the step details of the new master's last promote, once it has finished.

        The keys are step names, such as `release wait` and `multi-mount protection`; a step that
        did not run, or has no detail, is missing. The client is served before the promote ends,
        because the promote still waits for the containers' health checks.
        """

        def finished() -> FailoverRecord | None:
            records = HistoryStore(new_master.paths.state_dir).read().records
            promote = next((record for record in reversed(records) if record.kind is RecordKind.FAILOVER), None)
            return promote if promote is not None and promote.outcome is not RecordOutcome.RUNNING else None

        promote = wait_for(finished, timeout, f"the promote of {new_master.name} to finish")
        return {step.name: step.detail for step in promote.steps if step.detail is not None}

    def violations(self) -> list[Violation]:
        return self.sampler.snapshot()[1]

    def missing_mails(self, before: float, master: LabNode) -> list[str]:
        """Return the mails acknowledged before `before` that are not on the shared volume now."""
        if master.name not in self.lab.view().mounted_on:
            raise LabError(f"the shared volume is not mounted on {master.name}, so its mails cannot be checked there")
        spool = master.machine.path(master.config.paths.mount_point) / SPOOL
        return missing(self.mail.acknowledged(before), mail_ids_on_volume(spool))

    def missing_rows(self, before: float) -> list[str]:
        """Return the rows acknowledged before `before` that no Primary member has now."""
        for node in self.lab.nodes.values():
            status = node.database.try_status()
            if status is None or not status.synced_primary:
                continue
            rows = node.database.execute("SELECT id FROM lab.writes")
            return missing(self.writer.acknowledged(before), {str(row[0]) for row in rows})
        raise LabError("no Galera member is Synced in a Primary component; the rows cannot be checked")

    def assert_invariants(self, before: float, master: LabNode) -> None:
        """Fail with every broken invariant: samples, mails and rows acknowledged before `before`."""
        problems = [f"{violation.rule}: {violation.detail}" for violation in self.violations()]
        lost_mails = self.missing_mails(before, master)
        if lost_mails:
            problems.append(f"{len(lost_mails)} acknowledged mail(s) missing from the shared volume: {lost_mails[:5]}")
        lost_rows = self.missing_rows(before)
        if lost_rows:
            problems.append(f"{len(lost_rows)} acknowledged Galera row(s) missing: {lost_rows[:5]}")
        if self.sampler.errors:
            problems.append(f"{len(self.sampler.errors)} sample(s) failed: {self.sampler.errors[:3]}")
        if problems:
            raise AssertionError("invariants broken:\n  " + "\n  ".join(problems))

    # --- artifacts ---------------------------------------------------------------------------

    @staticmethod
    def keep_lab_logs(lab: Lab, target: Path) -> None:
        """Copy every node's logs (agent, keepalived, MariaDB, podman) and the fake cloud's into `target`."""
        target.mkdir(parents=True, exist_ok=True)
        for node in lab.nodes.values():
            if node.machine.log_dir.exists():
                shutil.copytree(node.machine.log_dir, target / node.name, dirs_exist_ok=True)
        cloud_dir = lab.lab_dir / cloudhost.CLOUD_DIR
        for name in ("cloud.log", cloudhost.EVENTS_FILE, "pulumi.log"):
            if (cloud_dir / name).exists():
                shutil.copy2(cloud_dir / name, target / f"cloud-{name}")

    def keep_artifacts(self, reason: str) -> Path | None:
        """Copy every log and record of this scenario into `<artifacts>/<name>/`; return the directory."""
        if self.artifacts is None:
            return None
        target = self.artifacts / self.name
        self.keep_lab_logs(self.lab, target)
        views, violations = self.sampler.snapshot()
        summary: dict[str, Any] = {
            "reason": reason,
            "notes": self.notes,
            "violations": [asdict(violation) for violation in violations],
            "sample_errors": self.sampler.errors,
            "mail_attempts": [asdict(attempt) for attempt in self.mail.attempts()],
            "database_attempts": [asdict(attempt) for attempt in self.writer.attempts()],
            "vrrp_adverts": [asdict(advert) for advert in self.vrrp.adverts()],
        }
        (target / "scenario.json").write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")
        (target / "views.jsonl").write_text(
            "".join(json.dumps(asdict(view), default=str) + "\n" for view in views), encoding="utf-8"
        )
        log.error("scenario %s failed; logs kept in %s", self.name, target)
        return target


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
