"""Building labs for the scenario suite: skip where a lab cannot run, keep logs where one fails."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from lab.cluster import Lab, LabOptions
from lab.scenario import Scenario

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
_TOOLS = ("keepalived", "mariadbd", "podman", "runc", "losetup", "nsenter", "busybox", "mkfs.ext4")


def missing_requirement() -> str | None:
    """Return why this machine cannot run a lab, or None when it can."""
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, loop devices, mounts)"
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists()]
    if missing:
        return f"the lab needs {', '.join(missing)}; run scripts/install-system-packages"
    return None


def build_lab(options: LabOptions) -> Lab:
    """Bring a lab up, or skip when this machine cannot run one; the caller takes it down."""
    problem = missing_requirement()
    if problem is not None:
        pytest.skip(problem)
    lab = Lab.create(options)
    try:
        lab.up()
    except BaseException:
        # Also on an interrupt or an unexpected error: down() stops the lab's threads and processes.
        Scenario.keep_lab_logs(lab, ARTIFACTS / f"lab-up-{lab.lab_id}")
        lab.down()
        raise
    return lab
