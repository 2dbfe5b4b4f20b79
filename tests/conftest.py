"""Plugins and fixtures for the whole test suite."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from harness import netguard


def pytest_configure(config: pytest.Config) -> None:
    netguard.register(config)


@pytest.fixture(autouse=True)
def restore_root_logging() -> Iterator[None]:
    """Restore the root logger's handlers and levels after each test.

    A test that runs a command's `main()` in-process sets up a handler on the stderr that pytest
    captured for that test. Later tests would log to that closed stream and print a "Logging error"
    traceback in place of each record.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    package = logging.getLogger("mailcow_ha")
    package_level = package.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    package.setLevel(package_level)
