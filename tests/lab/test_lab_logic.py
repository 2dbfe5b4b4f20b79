"""The lab's own decisions, without a lab: invariant rules, timelines, VRRP parsing, the manifest.

These need no root, so they run wherever the unit tests run.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from lab.invariants import RouteTracker, check_view, missing
from lab.manifest import Manifest, process_alive, process_start_time
from lab.observe import LabView, NodeView, mounts_of_image
from lab.timeline import build_timeline
from lab.traffic import Attempt
from lab.vrrp import Advert, _parse

PUBLIC = {"a": "198.51.100.1", "b": "198.51.100.2"}


def _view(at: float, *, mounted: dict[str, bool], serving: dict[str, bool], route: str | None) -> LabView:
    nodes = tuple(
        NodeView(
            name, index, True, ("/mnt",) if mounted.get(name) else (), ("c",) if serving.get(name) else (), health="0"
        )
        for index, name in enumerate(("a", "b"), start=1)
    )
    return LabView(1000.0 + at, at, nodes, {"203.0.113.2": route})


def test_two_mounts_break_single_mount() -> None:
    view = _view(1.0, mounted={"a": True, "b": True}, serving={"a": True}, route=PUBLIC["a"])

    rules = [violation.rule for violation in check_view(view, ["a"], RouteTracker(), PUBLIC, 3.0)]

    assert rules == ["single-mount"]


def test_two_serving_nodes_break_single_serving() -> None:
    view = _view(1.0, mounted={"a": True}, serving={"a": True, "b": True}, route=PUBLIC["a"])

    rules = [violation.rule for violation in check_view(view, ["a"], RouteTracker(), PUBLIC, 3.0)]

    assert rules == ["single-serving"]


def test_route_rule_waits_for_bound() -> None:
    tracker = RouteTracker()
    early = _view(0.0, mounted={"b": True}, serving={"b": True}, route=PUBLIC["a"])
    late = _view(3.5, mounted={"b": True}, serving={"b": True}, route=PUBLIC["a"])

    first = check_view(early, ["b"], tracker, PUBLIC, 3.0)
    second = check_view(late, ["b"], tracker, PUBLIC, 3.0)

    assert first == []
    assert [violation.rule for violation in second] == ["route-follows-master"]


def test_route_rule_ignores_master_not_serving() -> None:
    tracker = RouteTracker()
    views = [_view(at, mounted={}, serving={"a": True}, route=PUBLIC["a"]) for at in (0.0, 5.0)]

    found = [check_view(view, ["b"], tracker, PUBLIC, 3.0) for view in views]

    assert found == [[], []]


def test_route_rule_resets_on_new_master() -> None:
    tracker = RouteTracker()
    check_view(_view(0.0, mounted={"a": True}, serving={"a": True}, route=PUBLIC["a"]), ["a"], tracker, PUBLIC, 3.0)

    moved = check_view(
        _view(4.0, mounted={"b": True}, serving={"b": True}, route=PUBLIC["a"]), ["b"], tracker, PUBLIC, 3.0
    )

    assert moved == []
    assert tracker.master == "b"


def test_missing_keeps_acknowledgement_order() -> None:
    assert missing(["3", "1", "2"], {"1"}) == ["3", "2"]


def test_mounts_of_image_matches_loop_backing_file() -> None:
    mountinfo = (
        "36 25 7:3 / /srv/data rw,noatime - ext4 /dev/loop3 rw\n"
        "37 25 7:4 / /var/lib/mysql rw - ext4 /dev/loop4 rw\n"
        "38 25 0:5 / /proc rw - proc proc rw\n"
    )
    cache: dict[str, str | None] = {"/dev/loop3": "/lab/volume-2001.img", "/dev/loop4": "/lab/volume-2002.img"}

    assert mounts_of_image(mountinfo, "/lab/volume-2001.img", cache) == ["/srv/data"]


def _vrrp_frame(source: str, priority: int, protocol: int = 112) -> bytes:
    ethernet = b"\x00" * 12 + b"\x08\x00"
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 255, protocol, 0, socket.inet_aton(source), socket.inet_aton("10.0.1.12")
    )
    vrrp = bytes([0x21, 51, priority, 0, 0, 1, 0, 0])
    return ethernet + header + vrrp


def test_vrrp_parse_reads_source_and_priority() -> None:
    advert = _parse(_vrrp_frame("10.0.1.11", 250))

    assert advert is not None
    assert advert.source == "10.0.1.11"
    assert advert.priority == 250


def test_vrrp_parse_skips_other_protocols() -> None:
    assert _parse(_vrrp_frame("10.0.1.11", 250, protocol=6)) is None


def test_timeline_marks_and_phases() -> None:
    private = {"a": "10.0.1.11", "b": "10.0.1.12"}
    views = [
        _view(10.0, mounted={"a": True}, serving={"a": True}, route=PUBLIC["a"]),
        _view(10.9, mounted={"b": True}, serving={}, route=PUBLIC["b"]),
        _view(11.0, mounted={"b": True}, serving={"b": True}, route=PUBLIC["b"]),
    ]
    adverts = [Advert(10.3, "10.0.1.11", 0), Advert(10.4, "10.0.1.12", 240)]
    hooks = [
        {"kind": "floating_ip.assigned", "time": 1010.5, "next_hop": PUBLIC["b"]},
        {"kind": "volume.attached", "time": 1010.6, "volume": 7, "node": "b"},
    ]
    mails = [Attempt(11.0, 11.2, True, "<m>")]

    timeline = build_timeline(
        title="t", fault="crash", fault_at=10.0, old_master="a", views=views, adverts=adverts,
        hook_events=hooks, mail_attempts=mails, private_ips=private, public_ips=PUBLIC,
        shared_volume_id=7, critical_containers=1, detected_at=10.2,
    )  # fmt: skip

    phases = timeline.phases()
    assert phases["detection"] == 0.2
    assert phases["election"] == 0.2
    assert phases["cloud moves"] == 0.2
    assert phases["mount"] == 0.3
    assert phases["container start"] == 0.1
    assert phases["total"] == 1.2
    assert timeline.mark("FAULT").at == 10.3


def test_manifest_skips_torn_line(tmp_path: Path) -> None:
    manifest = Manifest(tmp_path)
    manifest.record("netns", "lab-a")
    with manifest.path.open("a") as stream:
        stream.write('{"kind": "loop", "na')

    entries = manifest.entries()

    assert [(entry.kind, entry.name) for entry in entries] == [("netns", "lab-a")]


def test_process_identity_needs_start_time() -> None:
    start = process_start_time(1)

    assert start is not None
    assert process_alive(1, start)
    assert not process_alive(1, start + 1)
