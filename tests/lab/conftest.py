"""Fixtures of the lab scenarios: one 3-node lab for the session, restored before each scenario.

Scenarios that need another shape (5 nodes, a whole-cluster restart) build their own lab with
`build_lab`. A failed scenario keeps every node's logs under test-artifacts/<scenario>/.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lab.cluster import Lab, LabOptions
from lab.restore import restore
from lab.scenario import Scenario
from lab.testing import ARTIFACTS, build_lab


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"lab_report_{report.when}", report)
    return report


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
