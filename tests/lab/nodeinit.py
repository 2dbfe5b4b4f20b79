"""The init process of one lab node: PID 1 of the node's own PID, mount and UTS namespaces.

Run as `python -m lab.nodeinit --netns NS --hostname NAME --pid-file FILE` from the host. The
launcher joins the node's network namespace, creates the other namespaces, forks the init and
writes the init's host pid and start time to FILE. The init mounts a /proc of its own (so that
keepalived's `track_process` sees only this node's processes, as on a real server), fresh tmpfs
on /run, /dev/shm and /tmp (so pid files, sockets, temporary files and podman's shared-memory
locks are per node), and then reaps orphans until it is killed. SIGKILL of the init is the node's power switch: the
kernel then ends every process in the node and its mounts go away with the mount namespace.

The fresh tmpfs mounts hide whatever the host has below /run, /dev/shm and /tmp. A directory the
node needs from the host (the repository with its venv, the lab directory) that lies below one of
them is passed with `--keep DIR` and bind-mounted back at the same path, so the lab runs from any
checkout path.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
import time
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REC = 0x4000
MS_PRIVATE = 0x40000

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what} failed: {os.strerror(error)}")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    result = _libc.mount(
        source.encode(),
        target.encode(),
        fstype.encode() if fstype else None,
        ctypes.c_ulong(flags),
        data.encode() if data else None,
    )
    _check(result, f"mount {fstype or ''} on {target}")


def enter_network_namespace(name: str) -> None:
    """Move the calling thread into the network namespace /run/netns/NAME."""
    descriptor = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _check(_libc.setns(descriptor, CLONE_NEWNET), f"setns into network namespace {name}")
    finally:
        os.close(descriptor)


MS_BIND = 0x1000
REPLACED_DIRECTORIES = ("/run", "/dev/shm", "/tmp")
"""Directories that the init covers with a fresh tmpfs of its own."""
ETC_FILES = ("resolv.conf", "hosts")
"""Files of the node's own /etc, bind-mounted over the host's: without them every name lookup
inside the lab would wait for the host's resolver, which the lab cannot reach (rsync's reverse
lookup alone adds 5 s to each step of a Galera state transfer)."""


def hidden_by_tmpfs(path: Path) -> bool:
    """Return whether `path` lies below a directory that the init replaces with a fresh tmpfs."""
    return any(path == Path(top) or Path(top) in path.parents for top in REPLACED_DIRECTORIES)


def _keep_visible(keep: list[Path]) -> list[tuple[int, Path]]:
    """Open each directory to keep that the tmpfs mounts would hide; return the descriptors and paths."""
    opened = []
    for path in keep:
        real = path.resolve()
        if hidden_by_tmpfs(real):
            opened.append((os.open(real, os.O_PATH | os.O_DIRECTORY), real))
    return opened


def _bind_back(opened: list[tuple[int, Path]]) -> None:
    """Bind each kept directory, opened before the tmpfs mounts, back at its own path."""
    for descriptor, path in opened:
        path.mkdir(parents=True, exist_ok=True)
        _mount(f"/proc/self/fd/{descriptor}", str(path), None, MS_BIND | MS_REC)
        os.close(descriptor)


def _run_init(hostname: str, etc_dir: Path | None, log_dir: Path | None, keep: list[Path]) -> None:
    """Set up the node's view of the system, then reap children until killed."""
    _check(_libc.sethostname(hostname.encode(), len(hostname)), f"sethostname {hostname}")
    opened = _keep_visible(keep)
    if etc_dir is not None:
        for name in ETC_FILES:
            if (etc_dir / name).exists():
                _mount(str(etc_dir / name), f"/etc/{name}", None, MS_BIND)
    if log_dir is not None and (log_dir / "var-log").is_dir():
        # The node's own /var/log (MariaDB's error log is /var/log/mysql/error.log), kept on the host
        # with the node's other logs so that it outlives a power-off.
        _mount(str(log_dir / "var-log"), "/var/log", None, MS_BIND)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=64m")
    _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=64m")
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=256m")
    _bind_back(opened)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            time.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start a lab node's init in its own namespaces.")
    parser.add_argument("--netns", required=True, help="network namespace name under /run/netns")
    parser.add_argument("--hostname", required=True, help="the node's host name")
    parser.add_argument("--pid-file", type=Path, required=True, help="where to write '<host pid> <start time>'")
    parser.add_argument("--etc-dir", type=Path, help="directory with the node's resolv.conf and hosts")
    parser.add_argument("--log-dir", type=Path, help="the node's log directory; its var-log/ becomes /var/log")
    parser.add_argument(
        "--keep",
        type=Path,
        action="append",
        default=[],
        help="a host directory the node must see at the same path even below /run, /dev/shm or /tmp (repeatable)",
    )
    args = parser.parse_args(argv)

    # The host's /proc, opened before the init mounts the node's own /proc over it.
    host_proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
    enter_network_namespace(args.netns)
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWPID), "unshare of mount, UTS and PID namespaces")
    # Mounts made inside the node must not propagate back to the host, nor the host's into it.
    _mount("none", "/", None, MS_REC | MS_PRIVATE)

    child = os.fork()
    if child == 0:
        try:
            _run_init(args.hostname, args.etc_dir, args.log_dir, args.keep)
        except BaseException as error:
            print(f"lab node init {args.hostname}: {error}", file=sys.stderr)
            os._exit(1)

    stat_descriptor = os.open(f"{child}/stat", os.O_RDONLY, dir_fd=host_proc)
    stat = os.read(stat_descriptor, 4096).decode()
    os.close(stat_descriptor)
    start_time = stat[stat.rindex(")") + 2 :].split()[19]
    temporary = args.pid_file.with_suffix(".tmp")
    temporary.write_text(f"{child} {start_time}\n")
    temporary.replace(args.pid_file)
    # The launcher stays as the init's parent so that the init's exit status is collected.
    signal.signal(signal.SIGTERM, lambda *_: os.kill(child, signal.SIGKILL))
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 0


if __name__ == "__main__":
    sys.exit(main())
