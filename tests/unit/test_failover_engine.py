"""Engine adapter parts that need no engine: inspect JSON, compose labels, events, unreachable sockets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mailcow_ha.adapters.engine import Engine, _container_event, container_info, parse_depends_on
from mailcow_ha.errors import EngineError

INSPECT: dict[str, Any] = {
    "Id": "abc123",
    "Name": "/mailcowdockerized-postfix-mailcow-1",
    "RestartCount": 2,
    "State": {"Status": "running", "ExitCode": 0, "Health": {"Status": "healthy"}},
    "Config": {
        "Labels": {
            "com.docker.compose.project": "mailcowdockerized",
            "com.docker.compose.service": "postfix-mailcow",
            "com.docker.compose.depends_on": "unbound-mailcow:service_started:false,mysql-mailcow:service_healthy:true",
        },
        "StopTimeout": 30,
        "Healthcheck": {"Test": ["CMD-SHELL", "/usr/local/bin/healthcheck.sh"], "Interval": 30_000_000_000},
    },
    "HostConfig": {"RestartPolicy": {"Name": "always"}},
}


def test_container_info_from_inspect() -> None:
    info = container_info(INSPECT)

    assert info.name == "mailcowdockerized-postfix-mailcow-1"
    assert info.service == "postfix-mailcow"
    assert info.health == "healthy"
    assert info.ready
    assert info.restart_policy == "always"
    assert info.restart_count == 2
    assert info.depends_on == ("unbound-mailcow", "mysql-mailcow")
    assert info.stop_timeout == 30.0


@pytest.mark.parametrize("stop_timeout", [None, 0])
def test_default_stop_timeout(stop_timeout: int | None) -> None:
    data = {**INSPECT, "Config": {**INSPECT["Config"], "StopTimeout": stop_timeout}}

    assert container_info(data).stop_timeout == 10.0


def test_no_healthcheck_means_ready_when_running() -> None:
    config = {key: value for key, value in INSPECT["Config"].items() if key != "Healthcheck"}
    data = {**INSPECT, "State": {"Status": "running"}, "Config": config}

    info = container_info(data)

    assert info.health is None
    assert info.ready


@pytest.mark.parametrize(
    "healthcheck",
    [None, {}, {"Test": []}, {"Test": ["NONE"]}],
    ids=["absent", "empty", "no-test", "disabled"],
)
def test_podman_empty_health_without_check(healthcheck: dict[str, object] | None) -> None:
    # podman 4.3 reports State.Health = {"Status": ""} for every container, with or without a check.
    config = {**INSPECT["Config"], "Healthcheck": healthcheck}
    data = {**INSPECT, "State": {"Status": "running", "Health": {"Status": ""}}, "Config": config}

    info = container_info(data)

    assert info.health is None
    assert info.ready


def test_health_check_not_run_yet_is_starting() -> None:
    data = {**INSPECT, "State": {"Status": "running", "Health": {"Status": ""}}}

    info = container_info(data)

    assert info.health == "starting"
    assert not info.ready


def test_depends_on_empty() -> None:
    assert parse_depends_on(None) == ()
    assert parse_depends_on("") == ()


def test_die_event_parsed() -> None:
    event = _container_event(
        {
            "Type": "container",
            "Action": "die",
            "Actor": {
                "ID": "abc",
                "Attributes": {
                    "name": "proj-redis-mailcow-1",
                    "com.docker.compose.service": "redis-mailcow",
                    "exitCode": "137",
                },
            },
            "timeNano": 1_700_000_000_500_000_000,
        }
    )

    assert event is not None
    assert event.action == "die"
    assert event.service == "redis-mailcow"
    assert event.exit_code == 137
    assert event.time == pytest.approx(1_700_000_000.5)


def test_non_container_event_ignored() -> None:
    assert _container_event({"Type": "image", "Action": "pull"}) is None


def test_unreachable_engine_named(tmp_path: Path) -> None:
    engine = Engine(f"unix://{tmp_path / 'missing.sock'}", request_timeout=1)

    with pytest.raises(EngineError, match="check that the engine at"):
        engine.project_containers("mailcowdockerized")
