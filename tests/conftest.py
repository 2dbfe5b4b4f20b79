"""Plugins for the whole test suite."""

from __future__ import annotations

import pytest

from harness import netguard


def pytest_configure(config: pytest.Config) -> None:
    netguard.register(config)
