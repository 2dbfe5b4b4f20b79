"""Fixtures of the lab scenarios: one 3-node lab for the session, restored before each scenario.

Scenarios that need another shape (5 nodes, a whole-cluster restart) build their own lab with
`build_lab`. A failed scenario keeps every node's logs under test-artifacts/<scenario>/.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.cluster import Lab, LabOptions
from lab.restore import restore
from lab.scenario import Scenario
from lab.shell import LabError

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
_TOOLS = ("keepalived", "mariadbd", "podman", "runc", "losetup", "nsenter", "busybox", "mkfs.ext4")


def _missing_requirement() -> str | None:
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, loop devices, mounts)"
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists()]
    if missing:
        return f"the lab needs {', '.join(missing)}; run scripts/install-system-packages"
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"lab_report_{report.when}", report)
    return report


def build_lab(options: LabOptions) -> Lab:
    """Bring a lab up, or skip when this machine cannot run one; the caller takes it down."""
    problem = _missing_requirement()
    if problem is not None:
        pytest.skip(problem)
    lab = Lab.create(options)
    try:
        lab.up()
    except LabError:
        Scenario.keep_lab_logs(lab, ARTIFACTS / f"lab-up-{lab.lab_id}")
        lab.down()
        raise
    return lab


@pytest.fixture(scope="session")
def session_lab() -> Iterator[Lab]:
    lab = build_lab(LabOptions(nodes=3))
    yield lab
    lab.down()


@pytest.fixture
def lab(session_lab: Lab) -> Lab:
    """The session's 3-node lab, restored to one serving master with every node healthy."""
    restore(session_lab)
    return session_lab


@pytest.fixture
def open_scenario(request: pytest.FixtureRequest) -> Iterator[Callable[[Lab], Scenario]]:
    """Start a scenario (traffic, observers) on a lab; its logs are kept if the test fails."""
    started: list[Scenario] = []

    def start(target: Lab) -> Scenario:
        scenario = Scenario(target, request.node.name, ARTIFACTS)
        scenario.__enter__()
        started.append(scenario)
        return scenario

    yield start
    for scenario in started:
        scenario.__exit__(None, None, None)
        report = getattr(request.node, "lab_report_call", None)
        if report is None or report.failed:
            scenario.keep_artifacts("the test failed" if report is not None else "the test did not run to its end")
