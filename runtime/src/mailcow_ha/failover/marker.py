"""The marker file that identifies the shared data volume: `<mount>/.mailcow-ha/volume.json`.

`mailcow-ha init-data` writes it once, when the volume is first prepared. Promote reads it after
mounting and starts nothing unless it names this cluster and this volume, so an empty directory
on the root disk (a mount that silently failed) or another cluster's volume is never used.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from mailcow_ha.errors import MailcowHaError
from mailcow_ha.state import write_json

MARKER_DIR = ".mailcow-ha"
MARKER_FILE = "volume.json"
FORMAT_VERSION = 1


class MarkerError(MailcowHaError):
    """The marker file is unreadable, corrupt, or of a newer format than this runtime reads."""


@dataclass(frozen=True)
class VolumeMarker:
    """The identity of a prepared shared data volume."""

    cluster: str
    volume_id: int
    created_at: str
    """When init-data wrote the marker, as an ISO 8601 UTC timestamp."""
    format_version: int = FORMAT_VERSION


def marker_path(mount_point: Path) -> Path:
    """Return the marker file's path under a mount point."""
    return mount_point / MARKER_DIR / MARKER_FILE


def read_marker(mount_point: Path) -> VolumeMarker | None:
    """Read the marker under `mount_point`; return None when there is none.

    Raises MarkerError when the file exists but cannot be read or parsed. Unlike the state files,
    a corrupt marker is never moved aside, because it is the only proof of the volume's identity.
    """
    path = marker_path(mount_point)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise MarkerError(f"volume marker {path} could not be read: {error}; check the volume") from None
    try:
        data = json.loads(raw)
        marker = VolumeMarker(
            cluster=str(data["cluster"]),
            volume_id=int(data["volume_id"]),
            created_at=str(data["created_at"]),
            format_version=int(data["format_version"]),
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise MarkerError(
            f"volume marker {path} is corrupt; compare it with the volume's history before repairing it by hand"
        ) from None
    if marker.format_version > FORMAT_VERSION:
        raise MarkerError(
            f"volume marker {path} has format version {marker.format_version}, newer than {FORMAT_VERSION}; "
            "upgrade mailcow-ha on this node"
        )
    return marker


def write_marker(mount_point: Path, marker: VolumeMarker) -> Path:
    """Write the marker atomically (mode 0600) and return its path."""
    path = marker_path(mount_point)
    write_json(path, asdict(marker))
    return path


def marker_problem(marker: VolumeMarker | None, *, cluster: str, volume_id: int) -> str | None:
    """Return why `marker` does not identify this cluster's shared volume, or None when it does."""
    if marker is None:
        return "no volume marker; the volume is not mounted or was never prepared with `mailcow-ha init-data`"
    if marker.cluster != cluster:
        return f"the volume marker names cluster {marker.cluster!r}, not {cluster!r}"
    if marker.volume_id != volume_id:
        return f"the volume marker names volume {marker.volume_id}, not {volume_id}"
    return None
