"""`mailcow-ha-lab down` removes everything a lab made, even when the driver died half-way up."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lab.cluster import DESCRIPTION_FILE, lab_root
from lab.testing import missing_requirement

pytestmark = pytest.mark.lab

DRIVER = Path(__file__).resolve().parent / "mailcow-ha-lab"


def _leftovers(lab_id: str, lab_dir: Path) -> list[str]:
    found = [f"netns {name}" for name in os.listdir("/run/netns") if name.startswith(f"{lab_id}-")]
    listed = subprocess.run(
        ["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"], capture_output=True, text=True, check=False
    )
    found += [f"loop {line}" for line in listed.stdout.splitlines() if str(lab_dir) in line]
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                command = Path(f"/proc/{entry.name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(lab_dir) in command or lab_id in command:
                found.append(f"process {entry.name}: {command[:120]}")
    if lab_dir.exists():
        found.append(f"directory {lab_dir}")
    return found


def test_down_after_driver_killed_mid_up() -> None:
    problem = missing_requirement()
    if problem is not None:
        pytest.skip(problem)
    root = lab_root()
    before = set(os.listdir(root)) if root.exists() else set()
    driver = subprocess.Popen([str(DRIVER), "--log-level", "WARNING", "up"], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    lab_dir: Path | None = None
    while time.monotonic() < deadline:
        new = [name for name in (set(os.listdir(root)) - before) if name.startswith("mhl")] if root.exists() else []
        if new:
            lab_dir = root / new[0]
            # Wait until the nodes run (their Galera members are starting), then kill the driver.
            if list(lab_dir.glob("nodes/*/podman/podman.sock")):
                break
        time.sleep(0.2)
    assert lab_dir is not None, "the driver created no lab directory"

    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=10)
    assert (lab_dir / DESCRIPTION_FILE).exists()
    assert _leftovers(lab_dir.name, lab_dir)

    result = subprocess.run(
        [str(DRIVER), "down", "--lab", lab_dir.name], capture_output=True, text=True, timeout=120, check=False
    )

    assert result.returncode == 0, result.stderr
    assert _leftovers(lab_dir.name, lab_dir) == []
