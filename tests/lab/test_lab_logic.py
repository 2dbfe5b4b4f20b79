"""The lab's own decisions, without a lab: invariant rules, timelines, VRRP parsing, the manifest.

These need no root, so they run wherever the unit tests run.
"""

from __future__ import annotations

import socket
import struct
import threading
from pathlib import Path

import pytest

from lab.cluster import run_parallel
from lab.invariants import RouteTracker, check_view, missing
from lab.manifest import Manifest, process_alive, process_start_time
from lab.nodeinit import hidden_by_tmpfs
from lab.observe import LabView, NodeView, mounts_of_image
from lab.shell import LabError
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


def _fenced(view: LabView, name: str) -> LabView:
    """Return `view` with `name`'s shared mounts on a device the cloud has detached."""
    nodes = tuple(
        NodeView(node.name, node.index, node.powered, node.shared_mounts, node.containers, health=node.health,
                 fenced_mounts=node.shared_mounts if node.name == name else ())
        for node in view.nodes
    )  # fmt: skip
    return LabView(view.time, view.monotonic, nodes, view.floating_ip_routes)


def test_detached_old_mount_not_a_writer() -> None:
    # The old master still has the volume mounted and its containers running until its demote,
    # but the cloud has detached the volume from it, so none of its writes reach the disk.
    view = _fenced(_view(1.0, mounted={"a": True, "b": True}, serving={"a": True, "b": True}, route=PUBLIC["b"]), "a")

    rules = [violation.rule for violation in check_view(view, ["b"], RouteTracker(), PUBLIC, 3.0)]

    assert rules == []
    assert view.mounted_on == ["a", "b"]
    assert view.writable_on == ["b"]
    assert view.serving_unfenced == ["b"]


def test_containers_without_mount_still_serving() -> None:
    # Containers on a node that has no mount of the shared volume at all (an empty directory of
    # the root disk) count, so two of them still break the rule.
    view = _fenced(_view(1.0, mounted={"b": True}, serving={"a": True, "b": True}, route=PUBLIC["b"]), "b")

    rules = [violation.rule for violation in check_view(view, ["b"], RouteTracker(), PUBLIC, 3.0)]

    assert rules == []
    assert view.serving_unfenced == ["a"]
    both = _view(1.0, mounted={"b": True}, serving={"a": True, "b": True}, route=PUBLIC["b"])
    assert [violation.rule for violation in check_view(both, ["b"], RouteTracker(), PUBLIC, 3.0)] == ["single-serving"]


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


def test_timeline_detection_from_fault_advert() -> None:
    private = {"a": "10.0.1.11", "b": "10.0.1.12"}
    views = [
        _view(10.0, mounted={"a": True}, serving={"a": True}, route=PUBLIC["a"]),
        _view(11.0, mounted={"b": True}, serving={"b": True}, route=PUBLIC["b"]),
    ]
    adverts = [Advert(10.3, "10.0.1.11", 0), Advert(10.4, "10.0.1.12", 240)]

    timeline = build_timeline(
        title="t", fault="crash", fault_at=10.0, old_master="a", views=views, adverts=adverts,
        hook_events=[], mail_attempts=[], private_ips=private, public_ips=PUBLIC,
        shared_volume_id=7, critical_containers=1,
    )  # fmt: skip

    assert timeline.mark("detection").at == 10.3
    assert timeline.phases()["election"] == pytest.approx(0.1)


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


def _pool_threads(prefix: str) -> list[str]:
    return [thread.name for thread in threading.enumerate() if thread.name.startswith(prefix)]


def test_parallel_failure_cancels_others() -> None:
    cancel = threading.Event()

    def boot(node: str) -> None:
        if node == "node-1":
            raise LabError("podman did not start")
        if not cancel.wait(30):
            raise AssertionError("the other boots were never cancelled")
        raise LabError("stopped waiting: the lab setup was cancelled")

    with pytest.raises(LabError, match="node-1: podman did not start"):
        run_parallel("boot-test", boot, ["node-1", "node-2", "node-3"], cancel=cancel)

    assert cancel.is_set()
    assert _pool_threads("lab-boot-test") == []


def test_parallel_unexpected_error_joins_threads() -> None:
    cancel = threading.Event()

    def boot(node: str) -> None:
        if node == "node-1":
            raise RuntimeError("a bug in the lab")
        cancel.wait(30)

    with pytest.raises(RuntimeError, match="a bug in the lab"):
        run_parallel("boot-bug", boot, ["node-1", "node-2"], cancel=cancel)

    assert cancel.is_set()
    assert _pool_threads("lab-boot-bug") == []


def test_parallel_success_leaves_cancel_clear() -> None:
    cancel = threading.Event()
    done: list[str] = []

    run_parallel("boot-ok", done.append, ["node-1", "node-2"], cancel=cancel)

    assert sorted(done) == ["node-1", "node-2"]
    assert not cancel.is_set()


def test_paths_hidden_by_node_tmpfs() -> None:
    assert hidden_by_tmpfs(Path("/tmp/ci-check"))
    assert hidden_by_tmpfs(Path("/run/user/0/checkout"))
    assert hidden_by_tmpfs(Path("/dev/shm/x"))
    assert not hidden_by_tmpfs(Path("/var/tmp/mailcow-ha-lab"))
    assert not hidden_by_tmpfs(Path("/tmpfoo/checkout"))
    assert not hidden_by_tmpfs(Path("/work/main"))
