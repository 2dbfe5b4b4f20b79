"""`mailcow-ha init-data`: prepare the freshly created shared volume, once, on node 1.

The Pulumi program creates the volume with an empty ext4 file system. This step turns on ext4
multi-mount protection, writes the marker that promote requires and creates the directory
layout that the compose override binds mailcow's volumes to. It never formats. It mounts the
volume on a private temporary directory and unmounts it again, so that afterwards only promote
mounts it on the real mount point.
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mailcow_ha.errors import BlockDeviceError, Refused
from mailcow_ha.failover.marker import (
    MARKER_DIR,
    MarkerError,
    VolumeMarker,
    read_marker,
    write_marker,
)
from mailcow_ha.mailcow import ext4
from mailcow_ha.render.compose import STATEFUL_DIRECTORIES

log = logging.getLogger(__name__)

IGNORED_ENTRIES = frozenset({"lost+found"})
"""Entries mkfs.ext4 creates, which do not count as existing data."""


class InitAction(enum.StrEnum):
    """Action of init-data on a volume, decided from the volume's contents."""

    PREPARE = "prepare"
    COMPLETE_LAYOUT = "complete-layout"
    REJECT = "reject"


@dataclass(frozen=True)
class VolumeContents:
    """Contents of the mounted volume that the decision depends on."""

    marker: VolumeMarker | None
    marker_error: str | None
    entries: frozenset[str]
    """Names in the volume's root directory."""


@dataclass(frozen=True)
class InitDecision:
    action: InitAction
    reason: str


@dataclass(frozen=True)
class InitRequest:
    """The volume to prepare and the identity to write on it."""

    device: Path
    cluster: str
    volume_id: int
    project_name: str
    mmp_update_interval: int = 5
    work_dir: Path = Path("/run/mailcow-ha")
    """Directory in which the temporary mount point is created."""


def decide(contents: VolumeContents, *, cluster: str, volume_id: int, project_name: str) -> InitDecision:
    """Decide whether the volume may be prepared, and why."""
    if contents.marker_error is not None:
        return InitDecision(InitAction.REJECT, f"{contents.marker_error}; nothing was changed")
    marker = contents.marker
    if marker is not None:
        if marker.cluster != cluster:
            return InitDecision(
                InitAction.REJECT,
                f"the volume belongs to cluster {marker.cluster!r} (marker written {marker.created_at}), "
                f"not {cluster!r}; attach this cluster's own volume",
            )
        if marker.volume_id != volume_id:
            return InitDecision(
                InitAction.REJECT,
                f"the volume's marker names volume {marker.volume_id}, but this is volume {volume_id}; "
                "it was copied from another volume, so check which one holds the current mail data",
            )
        return InitDecision(
            InitAction.COMPLETE_LAYOUT,
            f"already prepared for cluster {cluster} on {marker.created_at}; only missing directories are created",
        )
    data = sorted(contents.entries - IGNORED_ENTRIES)
    if data:
        kind = "mailcow data" if project_name in data or set(data) & set(STATEFUL_DIRECTORIES) else "data"
        return InitDecision(
            InitAction.REJECT,
            f"the volume has no marker but contains {kind} ({', '.join(data[:5])}); init-data only prepares an "
            "empty volume, so move the data off it or restore it onto a new volume",
        )
    return InitDecision(InitAction.PREPARE, "empty ext4 volume without a marker")


def init_data(request: InitRequest, *, now: datetime.datetime | None = None) -> InitDecision:
    """Check and prepare the shared volume; raise Refused when a safety rule forbids it."""
    device = request.device
    ext4.require_block_device(device)
    fs_type = ext4.filesystem_type(device)
    if fs_type != "ext4":
        raise Refused(
            f"{device} has {fs_type or 'no file system'}, expected ext4; mailcow-ha never formats, "
            "so check that this is the shared volume the Pulumi program created"
        )
    targets = ext4.mount_targets(device)
    if targets:
        raise Refused(f"{device} is mounted on {', '.join(targets)}; stop mailcow and unmount it, then run init-data")

    # The contents are checked on a read-only mount first, so a volume that is rejected (another
    # cluster's, or one with data) gets neither multi-mount protection nor a rw mount's writes.
    with _mounted(request, read_only=True) as root:
        _check(request, read_contents(root))

    if "mmp" not in ext4.ext4_features(device):
        ext4.enable_mmp(device, request.mmp_update_interval)

    with _mounted(request, read_only=False) as root:
        return _prepare_mounted(request, root, now or datetime.datetime.now(datetime.UTC))


@contextlib.contextmanager
def _mounted(request: InitRequest, *, read_only: bool) -> Iterator[Path]:
    """Mount the volume on a private temporary directory and unmount it afterwards."""
    request.work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    mount_dir = Path(tempfile.mkdtemp(prefix="init-data.", dir=request.work_dir))
    try:
        ext4.mount(request.device, mount_dir, read_only=read_only)
        try:
            yield mount_dir
        finally:
            if not read_only:
                os.sync()
            ext4.unmount(mount_dir)
    finally:
        mount_dir.rmdir()


def _check(request: InitRequest, contents: VolumeContents) -> InitDecision:
    """Decide from the contents, log the decision, and raise Refused when it rejects the volume."""
    decision = decide(contents, cluster=request.cluster, volume_id=request.volume_id, project_name=request.project_name)
    log.info("init-data on %s: %s (%s)", request.device, decision.action, decision.reason)
    if decision.action is InitAction.REJECT:
        raise Refused(f"init-data rejected {request.device}: {decision.reason}")
    return decision


def _prepare_mounted(request: InitRequest, root: Path, now: datetime.datetime) -> InitDecision:
    decision = _check(request, read_contents(root))

    if decision.action is InitAction.PREPARE:
        marker = VolumeMarker(
            cluster=request.cluster,
            volume_id=request.volume_id,
            created_at=now.isoformat(timespec="seconds"),
        )
        # The marker goes first: a crash after it leaves a volume that a second run completes.
        write_marker(root, marker)
    create_layout(root / request.project_name, STATEFUL_DIRECTORIES)
    return decision


def read_contents(root: Path) -> VolumeContents:
    """List the volume's root and read its marker, without raising on a corrupt marker."""
    try:
        entries = frozenset(entry.name for entry in root.iterdir() if entry.name != MARKER_DIR)
    except OSError as error:
        raise BlockDeviceError(f"listing {root} failed: {error.strerror}") from None
    try:
        return VolumeContents(read_marker(root), None, entries)
    except MarkerError as error:
        return VolumeContents(None, str(error), entries)


def create_layout(project_dir: Path, names: Iterable[str]) -> list[Path]:
    """Create the project directory and one directory per bound volume; return those created."""
    created = []
    for path in (project_dir, *(project_dir / name for name in names)):
        if not path.is_dir():
            path.mkdir(mode=0o755)
            created.append(path)
    if created:
        log.info("created %s", ", ".join(str(path) for path in created))
    return created
