"""Block devices and mounts: device wait, file system probe, mount, unmount, and the processes holding a mount.

Every external tool (blkid, dumpe2fs, mount, umount, sync) runs with a timeout, and a tool stuck
in the kernel (a mount on a device that went away) is abandoned rather than waited for. Mount
state is read from the kernel's mount table, `/proc/self/mountinfo`, never inferred from an exit
status. Nothing in this module formats a device.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from mailcow_ha.deadline import Clock, Deadline
from mailcow_ha.errors import BlockDeviceError

log = logging.getLogger(__name__)

MOUNTINFO = Path("/proc/thread-self/mountinfo")
"""The calling thread's mount table; threads of one process may live in different mount namespaces."""
_ABANDON_AFTER_KILL = 2.0
"""Seconds to wait for a timed-out tool to exit after SIGKILL before leaving it behind."""
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class BlockDevice:
    """A block device found under a stable name such as /dev/disk/by-id/scsi-0HC_Volume_<id>."""

    path: Path
    real_path: Path
    major: int
    minor: int

    @property
    def number(self) -> int:
        """The device number (`st_rdev`), which is `st_dev` of every file on a mounted file system."""
        return os.makedev(self.major, self.minor)

    def describe(self) -> str:
        return f"{self.path} ({self.real_path}, {self.major}:{self.minor})"


@dataclass(frozen=True)
class FilesystemProbe:
    """The file system signature blkid finds on a device, with the ext4 superblock's features."""

    fstype: str | None
    uuid: str | None
    label: str | None
    features: frozenset[str]
    """ext4 feature flags (such as `mmp`); empty for other file systems."""


@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/PID/mountinfo."""

    mount_id: int
    parent_id: int
    major: int
    minor: int
    root: str
    mount_point: str
    options: str
    fstype: str
    source: str

    @property
    def device_number(self) -> int:
        return os.makedev(self.major, self.minor)


@dataclass(frozen=True)
class Holder:
    """A process that keeps a mounted file system busy, and how."""

    pid: int
    command: str
    reasons: tuple[str, ...]
    uses_files: bool = True
    """False when the process only lives in a mount namespace where the file system is mounted."""

    def describe(self) -> str:
        return f"pid {self.pid} ({self.command}: {', '.join(self.reasons)})"


def run_tool(argv: list[str], *, action: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a block device tool for at most `timeout` seconds and return the finished process.

    Raises BlockDeviceError when the tool is missing or times out. A tool that does not exit
    after SIGKILL (stuck in uninterruptible I/O) is left behind, so this never blocks for longer
    than `timeout` plus two seconds. The caller checks the return code.
    """
    try:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except FileNotFoundError:
        raise BlockDeviceError(f"{action} failed: {argv[0]} not found; install util-linux and e2fsprogs") from None
    try:
        stdout, stderr = process.communicate(timeout=max(timeout, 0.001))
    except subprocess.TimeoutExpired:
        process.kill()
        try:
            process.communicate(timeout=_ABANDON_AFTER_KILL)
        except subprocess.TimeoutExpired:
            log.error("%s: pid %d did not exit after SIGKILL and was left behind", argv[0], process.pid)
        raise BlockDeviceError(f"{action} timed out after {timeout:.1f} s ({argv[0]} was killed)") from None
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def _tool_message(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line.strip() for line in (result.stderr or result.stdout or "").splitlines() if line.strip()]
    return lines[0] if lines else f"exit status {result.returncode}"


def block_device(path: Path) -> BlockDevice:
    """Resolve `path` and return the block device it names; raise BlockDeviceError otherwise."""
    try:
        real_path = path.resolve(strict=True)
        info = real_path.stat()
    except FileNotFoundError:
        raise BlockDeviceError(f"device {path} not found") from None
    except OSError as error:
        raise BlockDeviceError(f"device {path} could not be read: {error.strerror}") from None
    if not stat.S_ISBLK(info.st_mode):
        raise BlockDeviceError(f"{path} resolves to {real_path}, which is not a block device")
    return BlockDevice(path, real_path, os.major(info.st_rdev), os.minor(info.st_rdev))


def wait_for_device(
    path: Path,
    deadline: Deadline,
    *,
    sleep: Callable[[float], object] = time.sleep,
    checkpoint: Callable[[], None] | None = None,
    interval: float = 0.05,
) -> BlockDevice:
    """Poll until `path` resolves to a block device and return it.

    udev creates the by-id link shortly after the cloud attaches a volume. Raises
    BlockDeviceError when the deadline passes; `checkpoint` is called between polls.
    """
    while True:
        try:
            return block_device(path)
        except BlockDeviceError as error:
            if deadline.expired:
                raise BlockDeviceError(
                    f"{error} after waiting {deadline.step}; check that the volume is attached to this server "
                    f"and that udev created the link under {path.parent}"
                ) from None
        if checkpoint is not None:
            checkpoint()
        sleep(min(interval, deadline.remaining()))


def probe_filesystem(device: Path, *, timeout: float) -> FilesystemProbe:
    """Probe the file system signature on `device` with `blkid -p` (no cache) and read ext4 features."""
    result = run_tool(["blkid", "-p", "-o", "export", str(device)], action=f"blkid on {device}", timeout=timeout)
    # blkid exits 2 when it finds no known signature (blkid(8), util-linux 2.38).
    if result.returncode == 2:
        return FilesystemProbe(None, None, None, frozenset())
    if result.returncode != 0:
        raise BlockDeviceError(f"blkid on {device} failed: {_tool_message(result)}")
    values = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    fstype = values.get("TYPE")
    features: frozenset[str] = frozenset()
    if fstype in ("ext2", "ext3", "ext4"):
        features = ext4_features(device, timeout=timeout)
    return FilesystemProbe(fstype, values.get("UUID"), values.get("LABEL"), features)


def ext4_features(device: Path, *, timeout: float) -> frozenset[str]:
    """Read the feature flags from an ext2/3/4 superblock with `dumpe2fs -h` (read-only)."""
    result = run_tool(["dumpe2fs", "-h", str(device)], action=f"dumpe2fs on {device}", timeout=timeout)
    if result.returncode != 0:
        raise BlockDeviceError(f"dumpe2fs on {device} failed: {_tool_message(result)}")
    for line in result.stdout.splitlines():
        if line.startswith("Filesystem features:"):
            return frozenset(line.split(":", 1)[1].split())
    raise BlockDeviceError(f"dumpe2fs printed no feature list for {device}")


def _unescape(field: str) -> str:
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Parse the text of /proc/PID/mountinfo (see proc(5)); malformed lines are skipped."""
    entries = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            separator = fields.index("-", 6)
            major, minor = fields[2].split(":")
            entries.append(
                MountEntry(
                    mount_id=int(fields[0]),
                    parent_id=int(fields[1]),
                    major=int(major),
                    minor=int(minor),
                    root=_unescape(fields[3]),
                    mount_point=_unescape(fields[4]),
                    options=fields[5],
                    fstype=fields[separator + 1],
                    source=_unescape(fields[separator + 2]),
                )
            )
        except (ValueError, IndexError):
            log.warning("mountinfo line skipped, not in the expected format: %r", line)
    return entries


def read_mountinfo(path: Path = MOUNTINFO) -> list[MountEntry]:
    try:
        return parse_mountinfo(path.read_text(encoding="utf-8", errors="surrogateescape"))
    except OSError as error:
        raise BlockDeviceError(f"{path} could not be read: {error.strerror}") from None


def mounts_at(mount_point: Path, entries: Iterable[MountEntry]) -> list[MountEntry]:
    """Return the mounts on `mount_point` (symlinks resolved), bottom first; the last one is visible."""
    target = os.path.realpath(mount_point)
    return [entry for entry in entries if entry.mount_point == target]


def mounts_of(device_number: int, entries: Iterable[MountEntry]) -> list[MountEntry]:
    return [entry for entry in entries if entry.device_number == device_number]


def mount(device: BlockDevice, mount_point: Path, *, fstype: str, options: str, timeout: float) -> None:
    """Mount `device` on `mount_point` with an explicit type and options, then verify it in mountinfo.

    ext4 with multi-mount protection makes mount wait 2 * (2 * check interval + 1) s when the
    MMP block is active (see ext4mmp), so `timeout` must allow for that.
    """
    argv = ["mount", "-t", fstype, "-o", options, str(device.real_path), str(mount_point)]
    result = run_tool(argv, action=f"mounting {device.describe()} on {mount_point}", timeout=timeout)
    if result.returncode != 0:
        raise BlockDeviceError(f"mounting {device.describe()} on {mount_point} failed: {_tool_message(result)}")
    visible = mounts_at(mount_point, read_mountinfo())
    if not visible or visible[-1].device_number != device.number:
        raise BlockDeviceError(
            f"mount of {device.describe()} on {mount_point} reported success, but the kernel's mount table "
            "does not show it there; check for a mount namespace or automount interfering"
        )


def unmount(mount_point: Path, *, timeout: float) -> None:
    """Unmount the top mount on `mount_point`; raise BlockDeviceError with umount's message on failure."""
    result = run_tool(["umount", str(mount_point)], action=f"unmounting {mount_point}", timeout=timeout)
    if result.returncode != 0:
        raise BlockDeviceError(f"unmounting {mount_point} failed: {_tool_message(result)}")


def sync_filesystem(mount_point: Path, *, timeout: float) -> None:
    """Flush the file system mounted on `mount_point` to its device (`sync -f`, which calls syncfs)."""
    result = run_tool(["sync", "-f", str(mount_point)], action=f"syncing {mount_point}", timeout=timeout)
    if result.returncode != 0:
        raise BlockDeviceError(f"syncing {mount_point} failed: {_tool_message(result)}")


def _device_of(path: str) -> int | None:
    try:
        return os.stat(path).st_dev
    except OSError:
        return None


def _maps_device(pid_dir: str, major: int, minor: int) -> bool:
    wanted = f"{major:02x}:{minor:02x}"
    try:
        with open(f"{pid_dir}/maps", encoding="ascii", errors="replace") as maps:
            for line in maps:
                fields = line.split(None, 5)
                if len(fields) >= 5 and fields[3] == wanted and fields[4] != "0":
                    return True
    except OSError:
        return False
    return False


def _command(pid_dir: str) -> str:
    try:
        with open(f"{pid_dir}/comm", encoding="utf-8", errors="replace") as comm:
            return comm.read().strip()
    except OSError:
        return "?"


def find_holders(device_number: int, *, proc: Path = Path("/proc"), exclude: Iterable[int] = ()) -> list[Holder]:
    """Return every process that keeps the file system with `device_number` busy.

    A process keeps it busy through its working directory, root, executable, an open file, a
    mapped file, or by living in another mount namespace in which the file system is mounted (a
    container that bind-mounts it, for example). Device numbers are compared rather than paths,
    so holders in other mount namespaces are found too. Processes that exit during the scan are
    skipped.
    """
    excluded = {os.getpid(), *exclude}
    major, minor = os.major(device_number), os.minor(device_number)
    own_namespace = _readlink(f"{proc}/thread-self/ns/mnt")
    namespace_has_mount: dict[str, bool] = {}
    holders = []
    for entry in os.scandir(proc):
        if not entry.name.isdigit() or int(entry.name) in excluded:
            continue
        pid_dir = f"{proc}/{entry.name}"
        reasons = [link for link in ("cwd", "root", "exe") if _device_of(f"{pid_dir}/{link}") == device_number]
        open_files = _count_open_files(pid_dir, device_number)
        if open_files:
            reasons.append(f"{open_files} open file(s)")
        if _maps_device(pid_dir, major, minor):
            reasons.append("mapped file")
        namespace = _readlink(f"{pid_dir}/ns/mnt")
        if namespace is not None and namespace != own_namespace:
            if namespace not in namespace_has_mount:
                try:
                    others = parse_mountinfo(Path(f"{pid_dir}/mountinfo").read_text(errors="surrogateescape"))
                    namespace_has_mount[namespace] = bool(mounts_of(device_number, others))
                except OSError:
                    pass  # the process exited; another process in the namespace may still be read
            if namespace_has_mount.get(namespace, False):
                reasons.append(f"mounted in its mount namespace {namespace}")
        if reasons:
            uses_files = not (len(reasons) == 1 and reasons[0].startswith("mounted in"))
            holders.append(Holder(int(entry.name), _command(pid_dir), tuple(reasons), uses_files))
    return holders


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _count_open_files(pid_dir: str, device_number: int) -> int:
    try:
        descriptors = os.listdir(f"{pid_dir}/fd")
    except OSError:
        return 0
    return sum(1 for descriptor in descriptors if _device_of(f"{pid_dir}/fd/{descriptor}") == device_number)


def stop_holders(
    device_number: int,
    *,
    term_timeout: float,
    kill_timeout: float,
    sleep: Callable[[float], object] = time.sleep,
    clock: Clock = time.monotonic,
) -> list[Holder]:
    """Send SIGTERM to every process using files on the file system, SIGKILL after `term_timeout`.

    Returns every holder left afterwards. Processes that only live in a mount namespace where
    the file system is mounted are never signalled. Such a process may be a container or belong
    to a namespace made while the file system was mounted, and nothing shows whose it is, so it
    is returned for the caller to report. PID 1 and this process are never signalled either.
    """
    for signal_number, timeout in ((signal.SIGTERM, term_timeout), (signal.SIGKILL, kill_timeout)):
        targets = [holder for holder in find_holders(device_number) if holder.uses_files and holder.pid != 1]
        if not targets:
            break
        for holder in targets:
            log.warning("sending %s to %s", signal_number.name, holder.describe())
            try:
                os.kill(holder.pid, signal_number)
            except ProcessLookupError:
                pass
            except PermissionError as error:
                log.error("could not signal pid %d: %s", holder.pid, error.strerror)
        deadline = Deadline(f"{timeout:g} s after {signal_number.name}", clock() + timeout, clock)
        pids = {holder.pid for holder in targets}
        while not deadline.expired and any(holder.pid in pids for holder in find_holders(device_number)):
            sleep(min(0.05, deadline.remaining()))
    return find_holders(device_number)
