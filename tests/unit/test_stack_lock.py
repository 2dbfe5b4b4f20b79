"""The runtime lock that nodes install: every dependency pinned, with hashes, inside its range."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPOSITORY = Path(__file__).resolve().parents[2]
LOCK = REPOSITORY / "runtime/requirements.lock"
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)")


def read_lock() -> dict[str, tuple[str, int]]:
    """Return {name: (version, number of hashes)} from the lock file."""
    pins: dict[str, tuple[str, int]] = {}
    current = None
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        match = PIN.match(line)
        if match:
            current = canonicalize_name(match.group(1))
            pins[current] = (match.group(2), 0)
        elif current and line.strip().startswith("--hash=sha256:"):
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
    return pins


def test_lock_covers_runtime_dependencies() -> None:
    project = tomllib.loads((REPOSITORY / "runtime/pyproject.toml").read_text(encoding="utf-8"))
    pins = read_lock()

    for text in project["project"]["dependencies"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is missing from {LOCK.name}; run make lock"
        version, _ = pins[name]
        assert requirement.specifier.contains(version, prereleases=True), f"{name}=={version} vs {text}; run make lock"


def test_lock_pins_build_backend() -> None:
    pins = read_lock()

    assert "setuptools" in pins
    assert int(pins["setuptools"][0].split(".")[0]) >= 68


def test_every_pin_has_hashes() -> None:
    pins = read_lock()

    assert len(pins) >= 10
    for name, (_, hashes) in pins.items():
        assert hashes >= 1, name
