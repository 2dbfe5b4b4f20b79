"""keepalived.conf rendering: every node BACKUP with nopreempt, unicast peers, the agent's tracks."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from mailcow_ha.errors import ConfigError
from mailcow_ha.render.keepalived import (
    KeepalivedInputs,
    priority_for_index,
    render_keepalived_conf,
    vrrp_version_for,
)


def make_inputs(**overrides: Any) -> KeepalivedInputs:
    values: dict[str, Any] = {
        "router_id": "mailcow-ha-test-1",
        "interface": "enp7s0",
        "unicast_src_ip": "10.0.1.11",
        "peers": ["10.0.1.11", "10.0.1.12", "10.0.1.13"],
        "priority": 250,
        "notify_fifo": Path("/run/mailcow-ha/keepalived.fifo"),
        "health_file": Path("/run/mailcow-ha/health"),
    }
    values.update(overrides)
    return KeepalivedInputs(**values)


def block(text: str, header: str) -> str:
    """Return the lines of the top-level block that starts with `header`."""
    start = text.index(header + " {\n")
    end = text.index("\n}\n", start)
    return text[start : end + 1]


def test_every_node_is_backup_with_nopreempt() -> None:
    text = render_keepalived_conf(make_inputs())

    instance = block(text, "vrrp_instance mailcow")
    assert "    state BACKUP\n" in instance
    assert "    nopreempt\n" in instance
    assert "MASTER" not in text


def test_unicast_peers_exclude_own_address() -> None:
    text = render_keepalived_conf(make_inputs(peers=["10.0.1.13", "10.0.1.11", "10.0.1.12", "10.0.1.12"]))

    instance = block(text, "vrrp_instance mailcow")
    assert "    unicast_src_ip 10.0.1.11\n" in instance
    assert "    unicast_peer {\n        10.0.1.12\n        10.0.1.13\n    }\n" in instance


def test_global_defs_carry_agent_contract() -> None:
    text = render_keepalived_conf(make_inputs(router_id="node-x", script_user="ka_script"))

    global_defs = block(text, "global_defs")
    assert "    router_id node-x\n" in global_defs
    assert "    enable_script_security\n" in global_defs
    assert "    script_user ka_script ka_script\n" in global_defs
    assert "    notify_fifo /run/mailcow-ha/keepalived.fifo\n" in global_defs


def test_script_group_is_rendered() -> None:
    text = render_keepalived_conf(make_inputs(script_user="nobody", script_group="nogroup"))

    assert "    script_user nobody nogroup\n" in text


def test_health_file_puts_instance_into_fault() -> None:
    text = render_keepalived_conf(make_inputs(health_file=Path("/tmp/x/health")))

    track = block(text, "track_file mailcow_ha_health")
    assert '    file "/tmp/x/health"\n' in track
    assert "    weight 0\n" in track
    assert "    init_file 1 overwrite\n" in track
    assert "    track_file {\n        mailcow_ha_health\n    }\n" in block(text, "vrrp_instance mailcow")


def test_agent_process_is_tracked_with_weight_zero() -> None:
    text = render_keepalived_conf(make_inputs(agent_process="mailcow-ha-agen", agent_delay=1.5))

    track = block(text, "vrrp_track_process mailcow_ha_agent")
    assert "    process mailcow-ha-agen\n" in track
    assert "    quorum 1\n" in track
    assert "    weight 0\n" in track
    assert "    delay 1.5\n" in track
    assert "    track_process {\n        mailcow_ha_agent\n    }\n" in block(text, "vrrp_instance mailcow")


def test_agent_process_none_omits_track() -> None:
    text = render_keepalived_conf(make_inputs(agent_process=None))

    assert "track_process" not in text
    assert "mailcow_ha_agent" not in text


def test_only_marker_address_is_virtual() -> None:
    text = render_keepalived_conf(make_inputs(marker_address="192.0.2.7"))

    instance = block(text, "vrrp_instance mailcow")
    assert "    virtual_ipaddress {\n        192.0.2.7/32 dev lo scope host\n    }\n" in instance
    assert text.count("virtual_ipaddress") == 1


def test_instance_settings_are_rendered() -> None:
    inputs = make_inputs(instance="mc_test", interface="eth1", virtual_router_id=77, priority=230, advert_int=2)
    text = render_keepalived_conf(inputs)

    instance = block(text, "vrrp_instance mc_test")
    assert "    interface eth1\n" in instance
    assert "    virtual_router_id 77\n" in instance
    assert "    priority 230\n" in instance
    assert "    advert_int 2\n" in instance


def test_fractional_advert_uses_vrrp_v3() -> None:
    assert "    vrrp_version 2\n" in render_keepalived_conf(make_inputs(advert_int=1.0))
    assert "    vrrp_version 3\n" in render_keepalived_conf(make_inputs(advert_int=0.5))
    assert vrrp_version_for(3) == 2
    assert vrrp_version_for(0.25) == 3


def test_rendering_is_deterministic() -> None:
    first = render_keepalived_conf(make_inputs(peers=["10.0.1.13", "10.0.1.12"]))
    second = render_keepalived_conf(make_inputs(peers=["10.0.1.12", "10.0.1.13"]))

    assert first == second


def test_priorities_distinct_and_descending() -> None:
    priorities = [priority_for_index(index) for index in range(1, 10)]

    assert priorities[0] == max(priorities)
    assert len(set(priorities)) == 9
    assert all(1 <= priority <= 254 for priority in priorities)
    assert priorities == sorted(priorities, reverse=True)


@pytest.mark.parametrize("index", [0, 10, -1])
def test_priority_index_out_of_range(index: int) -> None:
    with pytest.raises(ConfigError, match=f"node index {index}"):
        priority_for_index(index)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("peers", ["10.0.1.11"], "no unicast peer"),
        ("peers", [], "no unicast peer"),
        ("peers", ["10.0.1.x"], "peer '10.0.1.x'"),
        ("unicast_src_ip", "fe80::1", "unicast_src_ip"),
        ("priority", 255, "priority 255"),
        ("priority", 0, "priority 0"),
        ("virtual_router_id", 256, "virtual_router_id 256"),
        ("advert_int", 0, "advert_int 0"),
        ("advert_int", float("nan"), "advert_int nan"),
        ("interface", "an-interface-too-long", "interface"),
        ("interface", "eth 0", "interface"),
        ("router_id", "node 1", "router_id"),
        ("instance", "inst}", "instance"),
        ("agent_process", "mailcow-ha-agent", "agent_process"),
        ("agent_process", "", "agent_process"),
        ("notify_fifo", Path("relative/fifo"), "relative/fifo"),
        ("health_file", Path("/run/with space"), "with space"),
        ("marker_address", "192.0.2", "marker_address"),
        ("script_group", "no group", "script_group"),
    ],
)
def test_invalid_inputs_rejected(field: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        make_inputs(**{field: value})

    assert expected in str(raised.value)


def test_inputs_are_frozen() -> None:
    inputs = make_inputs()

    with pytest.raises(dataclasses.FrozenInstanceError):
        inputs.priority = 1  # type: ignore[misc]
