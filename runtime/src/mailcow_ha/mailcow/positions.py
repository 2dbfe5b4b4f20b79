"""The local Galera member's position in the cluster's history.

A running member reports `wsrep_last_committed`. A stopped member's position is in grastate.dat
after an ordered stop. After a crash grastate.dat contains `seqno: -1`, and `mariadbd --wsrep-recover`
reads the last committed transaction from InnoDB and logs `WSREP: Recovered position: UUID:SEQNO`.
Positions travel between nodes as plain dicts (`to_dict`/`from_dict`) through the status API.
"""

from __future__ import annotations

import enum
import logging
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailcow_ha.config import GaleraSettings
from mailcow_ha.errors import DatabaseError
from mailcow_ha.mailcow import sql

log = logging.getLogger(__name__)

ZERO_UUID = "00000000-0000-0000-0000-000000000000"
RECOVER_TIMEOUT = 300.0
"""Seconds `--wsrep-recover` may take; it runs InnoDB crash recovery first."""

_RECOVERED = re.compile(r"WSREP: Recovered position:\s*([0-9a-f-]{36}):(-?\d+)")
_STATUS = (
    "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_cluster_status', 'wsrep_cluster_state_uuid', "
    "'wsrep_last_committed', 'wsrep_local_state_comment', 'wsrep_ready', 'wsrep_cluster_size')"
)


class MemberState(enum.StrEnum):
    """Whether the member's server runs, and in which kind of component."""

    STOPPED = "stopped"
    PRIMARY = "primary"
    NON_PRIMARY = "non-primary"


@dataclass(frozen=True)
class MemberPosition:
    """A member's state and the last transaction it committed."""

    node: str
    state: MemberState
    uuid: str
    """The cluster history (state UUID) the member belongs to; ZERO_UUID when it has none."""
    seqno: int
    """The last committed sequence number; -1 when unknown."""
    safe_to_bootstrap: bool
    source: str
    """Source of the position: wsrep_last_committed, grastate.dat or wsrep-recover."""
    synced: bool = False

    @property
    def brand_new(self) -> bool:
        """True for a member that never belonged to a cluster (a fresh data directory)."""
        return self.state is MemberState.STOPPED and self.uuid == ZERO_UUID and self.seqno < 0

    @property
    def known(self) -> bool:
        return self.seqno >= 0

    def describe(self) -> str:
        """Return a one-line summary for tables and error messages."""
        flags = " safe_to_bootstrap" if self.safe_to_bootstrap else ""
        return f"{self.node}: {self.state}, seqno {self.seqno} of {self.uuid} ({self.source}){flags}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "state": str(self.state),
            "uuid": self.uuid,
            "seqno": self.seqno,
            "safe_to_bootstrap": self.safe_to_bootstrap,
            "source": self.source,
            "synced": self.synced,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemberPosition:
        """Rebuild a position sent by another node; raise DatabaseError when it is malformed."""
        try:
            return cls(
                node=str(data["node"]),
                state=MemberState(data["state"]),
                uuid=str(data["uuid"]),
                seqno=int(data["seqno"]),
                safe_to_bootstrap=bool(data["safe_to_bootstrap"]),
                source=str(data["source"]),
                synced=bool(data.get("synced", False)),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise DatabaseError(f"malformed Galera position from a peer ({error!r}): {data!r}") from None


@dataclass(frozen=True)
class GrastateFile:
    uuid: str
    seqno: int
    safe_to_bootstrap: bool


def parse_grastate(text: str) -> GrastateFile:
    """Parse grastate.dat's `key: value` lines; missing keys mean no history."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, separator, value = line.partition(":")
        if separator and not key.startswith("#"):
            fields[key.strip()] = value.strip()
    try:
        seqno = int(fields.get("seqno", "-1"))
    except ValueError:
        raise DatabaseError(f"grastate.dat has an invalid seqno {fields.get('seqno')!r}") from None
    return GrastateFile(
        uuid=fields.get("uuid", ZERO_UUID) or ZERO_UUID,
        seqno=seqno,
        safe_to_bootstrap=fields.get("safe_to_bootstrap", "0") == "1",
    )


def read_grastate(data_dir: Path) -> GrastateFile:
    """Read `<data_dir>/grastate.dat`; a missing file is a member without history."""
    try:
        return parse_grastate((data_dir / "grastate.dat").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return GrastateFile(ZERO_UUID, -1, False)
    except OSError as error:
        raise DatabaseError(f"{data_dir / 'grastate.dat'} could not be read: {error.strerror}") from None


def parse_recovered(log_text: str) -> tuple[str, int] | None:
    """Return the last `Recovered position` logged by `--wsrep-recover`, or None."""
    matches = _RECOVERED.findall(log_text)
    if not matches:
        return None
    uuid, seqno = matches[-1]
    return uuid, int(seqno)


def running_position(settings: GaleraSettings, node: str, *, timeout: float = 5.0) -> MemberPosition | None:
    """Return the position of the running member, or None when no server runs on the socket."""
    try:
        rows = dict(sql.query(settings.socket, _STATUS, timeout=timeout))
    except sql.ServerNotRunning:
        return None
    primary = rows.get("wsrep_cluster_status") == "Primary"
    return MemberPosition(
        node=node,
        state=MemberState.PRIMARY if primary else MemberState.NON_PRIMARY,
        uuid=str(rows.get("wsrep_cluster_state_uuid") or ZERO_UUID),
        seqno=int(rows.get("wsrep_last_committed", -1)),
        safe_to_bootstrap=False,
        source="wsrep_last_committed",
        synced=primary and rows.get("wsrep_local_state_comment") == "Synced" and rows.get("wsrep_ready") == "ON",
    )


def recover_position(settings: GaleraSettings, *, timeout: float = RECOVER_TIMEOUT) -> tuple[str, int]:
    """Run `mariadbd --wsrep-recover` on the stopped member and return (uuid, seqno).

    The server writes to a private log file owned by the data directory's owner, the user that
    mariadbd switches to, so its output is read from there.
    """
    owner = settings.data_dir.stat()
    log_dir = Path(tempfile.mkdtemp(prefix="mailcow-ha-recover-"))
    log_file = log_dir / "recover.log"
    try:
        os.chown(log_dir, owner.st_uid, owner.st_gid)
        command = [settings.mariadbd]
        if settings.defaults_file is not None:
            command.append(f"--defaults-file={settings.defaults_file}")
        command += ["--wsrep-recover", f"--log-error={log_file}"]
        log.info("recovering the Galera position: %s", " ".join(command))
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        except FileNotFoundError:
            raise DatabaseError(f"{settings.mariadbd} not found; set galera.mariadbd in the node config") from None
        except subprocess.TimeoutExpired:
            raise DatabaseError(f"mariadbd --wsrep-recover timed out after {timeout:.0f} s") from None
        output = log_file.read_text(encoding="utf-8", errors="replace") if log_file.exists() else ""
        recovered = parse_recovered(output + result.stderr)
        if recovered is None:
            tail = " | ".join((output + result.stderr).strip().splitlines()[-3:])
            raise DatabaseError(
                f"mariadbd --wsrep-recover exited {result.returncode} without a recovered position: {tail}"
            )
        return recovered
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)


def local_position(settings: GaleraSettings, node: str) -> MemberPosition:
    """Return the local member's position, running or stopped, recovering it after a crash."""
    running = running_position(settings, node)
    if running is not None:
        return running
    grastate = read_grastate(settings.data_dir)
    if grastate.seqno >= 0 or not (settings.data_dir / "ibdata1").exists():
        return MemberPosition(
            node, MemberState.STOPPED, grastate.uuid, grastate.seqno, grastate.safe_to_bootstrap, "grastate.dat"
        )
    uuid, seqno = recover_position(settings)
    return MemberPosition(node, MemberState.STOPPED, uuid, seqno, grastate.safe_to_bootstrap, "wsrep-recover")


def mark_safe_to_bootstrap(data_dir: Path) -> None:
    """Set `safe_to_bootstrap: 1` in grastate.dat so that `--wsrep-new-cluster` accepts this member."""
    path = data_dir / "grastate.dat"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return
    if re.search(r"^safe_to_bootstrap:\s*1\s*$", text, flags=re.MULTILINE):
        return
    updated, count = re.subn(r"^safe_to_bootstrap:.*$", "safe_to_bootstrap: 1", text, flags=re.MULTILINE)
    if count == 0:
        updated = text.rstrip("\n") + "\nsafe_to_bootstrap: 1\n"
    stat = path.stat()
    temporary = path.with_name(".grastate.dat.mailcow-ha")
    temporary.write_text(updated, encoding="utf-8")
    os.chown(temporary, stat.st_uid, stat.st_gid)
    os.chmod(temporary, stat.st_mode & 0o777)
    os.replace(temporary, path)
    log.info("set safe_to_bootstrap: 1 in %s", path)
