"""What a lab created, written down before it is created, so `down` can remove it after a crash.

The manifest is a JSON-lines file in the lab directory. Every namespace, node, process and loop
device is appended (and fsync'd) before the command that creates it runs, so a crash at any
point leaves at most entries for things that do not exist, which removal skips. Removal touches
only what is listed, and checks identity first: a process by pid and start time, a loop device
by its backing file, so a reused pid or loop number of someone else is never hit.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.shell import LabError, run

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.jsonl"

# Removal runs kind by kind in this order: processes first so that mounts and loop devices are
# released, namespaces after the processes inside them, the lab directory last.
REMOVAL_ORDER = ("process", "node", "loop", "netns", "directory")


@dataclass(frozen=True)
class Entry:
    """One thing the lab created."""

    kind: str
    name: str
    details: dict[str, Any] = field(default_factory=dict)


def process_start_time(pid: int) -> int | None:
    """Return the start time (clock ticks since boot) of `pid`, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name in field 2 may contain spaces and parentheses, so split after its last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[19])


def process_alive(pid: int, start_time: int) -> bool:
    """Return whether `pid` is still the process that started at `start_time` and not a zombie."""
    if process_start_time(pid) != start_time:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


class Manifest:
    """The append-only list of what one lab created."""

    def __init__(self, lab_dir: Path) -> None:
        self.lab_dir = lab_dir
        self.path = lab_dir / MANIFEST_NAME

    def record(self, kind: str, name: str, **details: Any) -> None:
        """Append an entry and fsync it, before the thing it names is created."""
        if kind not in REMOVAL_ORDER:
            raise ValueError(f"unknown manifest kind {kind!r}; expected one of {', '.join(REMOVAL_ORDER)}")
        line = json.dumps({"kind": kind, "name": name, "details": details}, sort_keys=True) + "\n"
        self.lab_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(descriptor, line.encode())
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def record_process(self, kind: str, name: str, pid: int) -> None:
        """Append a running process with its start time, which removal checks before a signal."""
        start_time = process_start_time(pid)
        if start_time is None:
            raise LabError(f"process {name} (pid {pid}) exited right after it started; see its log in {self.lab_dir}")
        self.record(kind, name, pid=pid, start_time=start_time)

    def entries(self) -> list[Entry]:
        """Return every entry in the order recorded; a torn last line from a crash is skipped."""
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
        entries = []
        for number, line in enumerate(lines, start=1):
            try:
                document = json.loads(line)
                entries.append(Entry(document["kind"], document["name"], document.get("details", {})))
            except (json.JSONDecodeError, KeyError, TypeError):
                log.warning("manifest %s line %d is unreadable and skipped: %r", self.path, number, line[:80])
        return entries


def remove_all(manifest: Manifest, *, keep_directory: bool = False) -> list[str]:
    """Remove everything the manifest lists and return the problems met; never raises for one item.

    Runs kind by kind (REMOVAL_ORDER), newest first within a kind. A problem with one item is
    logged and reported, and removal goes on with the next, so one stuck item does not leave
    the rest of the lab behind.
    """
    entries = manifest.entries()
    problems: list[str] = []
    for kind in REMOVAL_ORDER:
        if kind == "directory" and keep_directory:
            continue
        for entry in reversed([entry for entry in entries if entry.kind == kind]):
            try:
                _REMOVERS[kind](entry)
            except (LabError, OSError) as error:
                problem = f"{entry.kind} {entry.name}: {error}"
                log.error("removing %s", problem)
                problems.append(problem)
    return problems


def _remove_process(entry: Entry) -> None:
    pid, start_time = int(entry.details["pid"]), int(entry.details["start_time"])
    if not process_alive(pid, start_time):
        return
    os.kill(pid, signal.SIGTERM)
    if not _wait_gone(pid, start_time, float(entry.details.get("grace", 5.0))):
        os.kill(pid, signal.SIGKILL)
        if not _wait_gone(pid, start_time, 5.0):
            raise LabError(f"pid {pid} is still alive 5 s after SIGKILL")


def _remove_node(entry: Entry) -> None:
    """Power a node off: SIGKILL of its init ends every process in the node's PID namespace.

    The entry names the pid file that the node's launcher writes, because the init's pid is
    known only after the entry had to be recorded.
    """
    try:
        pid_text, start_text = Path(entry.details["pid_file"]).read_text().split()
    except (FileNotFoundError, ValueError):
        return
    pid, start_time = int(pid_text), int(start_text)
    if not process_alive(pid, start_time):
        return
    os.kill(pid, signal.SIGKILL)
    if not _wait_gone(pid, start_time, 10.0):
        raise LabError(f"node init pid {pid} is still alive 10 s after SIGKILL")


def _wait_gone(pid: int, start_time: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not process_alive(pid, start_time):
            return True
        time.sleep(0.05)
    return not process_alive(pid, start_time)


def _remove_loop(entry: Entry) -> None:
    """Detach every loop device on the lab's image file `entry.name`, and nothing else."""
    image = entry.name
    if not Path(image).exists():
        return
    listed = run(["losetup", "--associated", image, "--noheadings", "--output", "NAME"], timeout=10.0)
    for device in listed.stdout.split():
        # A device still mounted in a dying node is only marked to be freed on its last close.
        run(["losetup", "--detach", device], timeout=10.0, check=False)


def _remove_netns(entry: Entry) -> None:
    if not Path(f"/run/netns/{entry.name}").exists():
        return
    run(["ip", "netns", "delete", entry.name], timeout=10.0)


def _remove_directory(entry: Entry) -> None:
    path = Path(entry.name)
    if path.exists():
        shutil.rmtree(path)


_REMOVERS = {
    "process": _remove_process,
    "node": _remove_node,
    "loop": _remove_loop,
    "netns": _remove_netns,
    "directory": _remove_directory,
}
