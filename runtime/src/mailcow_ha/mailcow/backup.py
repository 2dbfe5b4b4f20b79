"""`mailcow-ha backup` and `mailcow-ha restore`: mailcow's database and mail data.

The database is dumped from the local Galera member on any node with `mariadb-dump
--single-transaction`, which reads one consistent InnoDB snapshot without table locks, so the
cluster keeps accepting writes during the dump. The mail data (everything mailcow keeps under
`<mount point>/<project name>/`) exists only on the master, where the shared volume is mounted.
On a standby the command names the master instead. Each backup is a directory with the dump,
a tar archive and a manifest of SHA-256 sums, all readable by root only.
"""

from __future__ import annotations

import contextlib
import datetime
import gzip
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from mailcow_ha import __version__
from mailcow_ha.config import NodeConfig
from mailcow_ha.errors import MailcowHaError, Refused
from mailcow_ha.failover.marker import marker_problem, read_marker

log = logging.getLogger(__name__)

DATABASE_FILE = "database.sql.gz"
MAIL_FILE = "mail-data.tar"
MANIFEST_FILE = "manifest.json"
DUMP_TIMEOUT = 6 * 3600.0
"""Upper bound of one dump or archive; a large mailbox store takes hours to copy."""
CHUNK = 1024 * 1024
DUMP_ATTEMPTS = 3


class BackupError(MailcowHaError):
    """A dump, archive or restore step failed; the message names the file and the tool."""


@dataclass(frozen=True)
class BackupResult:
    directory: Path
    files: dict[str, str]
    """File name to SHA-256 hex digest."""


def is_master_here(config: NodeConfig) -> tuple[bool, str]:
    """Return whether this node has the shared volume mounted with this cluster's marker, and why."""
    mount_point = config.paths.mount_point
    if not os.path.ismount(mount_point):
        return False, f"{mount_point} is not a mount point on this node"
    problem = marker_problem(
        read_marker(mount_point), cluster=config.cluster, volume_id=config.hetzner.shared_volume_id
    )
    if problem is not None:
        return False, problem
    return True, f"{mount_point} holds this cluster's shared volume"


def new_backup_directory(parent: Path, now: datetime.datetime) -> Path:
    """Create `<parent>/mailcow-ha-<UTC timestamp>/` with mode 0700."""
    directory = parent / f"mailcow-ha-{now.strftime('%Y%m%dT%H%M%SZ')}"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        directory.mkdir(mode=0o700)
    except FileExistsError:
        raise BackupError(f"{directory} already exists; wait a second or choose another --to") from None
    except OSError as error:
        raise BackupError(
            f"backup directory {directory} could not be created: {error.strerror}; choose a writable --to"
        ) from None
    return directory


def dump_database(config: NodeConfig, target: Path, *, timeout: float = DUMP_TIMEOUT) -> str:
    """Dump mailcow's database through the local socket into gzip'd `target`; return its SHA-256."""
    command = [
        "mariadb-dump",
        f"--socket={config.galera.socket}",
        "--user=root",
        "--single-transaction",
        "--quick",
        "--routines",
        "--triggers",
        "--events",
        "--hex-blob",
        "--default-character-set=utf8mb4",
        "--databases",
        config.mailcow.db_name,
    ]
    log.info("dumping database %s from %s", config.mailcow.db_name, config.galera.socket)
    plain = target.with_name(f".{target.name}.sql")
    try:
        for attempt in range(1, DUMP_ATTEMPTS + 1):
            plain.unlink(missing_ok=True)
            with _private_file(plain) as stream:
                stderr = _run(command, timeout, "mariadb-dump", stdout=stream)
            if stderr is None:
                break
            # Error 1412: a table changed after the dump's snapshot began (a replicated DDL); retrying helps.
            if "Error 1412" not in stderr or attempt == DUMP_ATTEMPTS:
                raise BackupError(f"mariadb-dump of {config.mailcow.db_name} failed: {stderr}")
            log.warning("mariadb-dump attempt %d saw a table change, retrying: %s", attempt, stderr)
            time.sleep(1.0)
        with plain.open("rb") as source, _private_file(target) as raw, gzip.GzipFile(fileobj=raw, mode="wb") as packed:
            shutil.copyfileobj(source, packed, CHUNK)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    finally:
        plain.unlink(missing_ok=True)
    return _sha256(target)


def archive_mail_data(config: NodeConfig, target: Path, *, timeout: float = DUMP_TIMEOUT) -> str:
    """Archive `<mount>/<project>/` into tar `target` (owners as numbers, ACLs, xattrs)."""
    project = config.mailcow.project_name
    source = config.paths.mount_point / project
    if not source.is_dir():
        raise BackupError(f"{source} not found on the mounted volume; check mailcow.project_name")
    command = [
        "tar",
        "--create",
        f"--file={target}",
        "--numeric-owner",
        "--acls",
        "--xattrs",
        "--sparse",
        f"--directory={config.paths.mount_point}",
        project,
    ]
    log.info("archiving %s", source)
    with _private_file(target):
        pass
    stderr = _run(command, timeout, "tar", accepted=(0, 1))
    if stderr is not None:
        target.unlink(missing_ok=True)
        raise BackupError(f"tar of {source} failed: {stderr}")
    return _sha256(target)


def run_backup(
    config: NodeConfig,
    parent: Path,
    *,
    database: bool = True,
    mail: bool = True,
    find_master: Callable[[], str | None] = lambda: None,
    now: datetime.datetime | None = None,
) -> BackupResult:
    """Back up the database and, on the master, the mail data into a new directory under `parent`.

    Raises Refused before writing anything when mail data is requested on a standby, naming
    the master that `find_master` reports.
    """
    if mail:
        on_master, reason = is_master_here(config)
        if not on_master:
            master = find_master()
            where = f"run it on {master}, the master" if master else "no node reports MASTER"
            raise Refused(
                f"the mail data is only on the master and this node is not it ({reason}); {where}, "
                "or pass --database-only to back up only the database here"
            )
    timestamp = now or datetime.datetime.now(datetime.UTC)
    directory = new_backup_directory(parent, timestamp)
    try:
        files = _write_backup(config, directory, timestamp, database=database, mail=mail)
    except BaseException as error:
        # A backup without its manifest cannot be restored, so nothing of a failed one is kept.
        shutil.rmtree(directory, ignore_errors=True)
        if isinstance(error, OSError):
            raise BackupError(
                f"writing the backup to {directory} failed: {error.strerror}; free space there or choose another "
                "--to (the incomplete backup was removed)"
            ) from None
        if isinstance(error, BackupError):
            raise BackupError(f"{error} (the incomplete backup {directory} was removed)") from None
        raise
    log.info("backup written to %s (%s)", directory, ", ".join(sorted(files)))
    return BackupResult(directory, files)


def _write_backup(
    config: NodeConfig, directory: Path, timestamp: datetime.datetime, *, database: bool, mail: bool
) -> dict[str, str]:
    """Write the dump, the archive and last the manifest into `directory`; return the files' SHA-256."""
    files: dict[str, str] = {}
    if database:
        files[DATABASE_FILE] = dump_database(config, directory / DATABASE_FILE)
    if mail:
        files[MAIL_FILE] = archive_mail_data(config, directory / MAIL_FILE)
    manifest = {
        "cluster": config.cluster,
        "node": config.node.name,
        "created_at": timestamp.isoformat(timespec="seconds"),
        "database": config.mailcow.db_name if database else None,
        "project_name": config.mailcow.project_name,
        "mailcow_ha_version": __version__,
        "sha256": files,
    }
    with _private_file(directory / MANIFEST_FILE) as stream:
        stream.write(json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8") + b"\n")
        stream.flush()
        os.fsync(stream.fileno())
    return files


def read_manifest(directory: Path) -> dict[str, Any]:
    """Read a backup's manifest and check every listed file's SHA-256."""
    try:
        manifest = json.loads((directory / MANIFEST_FILE).read_text(encoding="utf-8"))
        sums = dict(manifest["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise BackupError(
            f"{directory / MANIFEST_FILE} is missing or invalid ({error}); pass a backup directory"
        ) from None
    for name, expected in sums.items():
        actual = _sha256(directory / name)
        if actual != expected:
            raise BackupError(f"{directory / name} does not match its SHA-256 in the manifest; it is damaged")
    result: dict[str, Any] = manifest
    return result


def restore_database(config: NodeConfig, directory: Path, *, timeout: float = DUMP_TIMEOUT) -> None:
    """Load the dump into the local member; Galera replicates it to every member."""
    manifest = read_manifest(directory)
    if DATABASE_FILE not in manifest["sha256"]:
        raise BackupError(f"{directory} contains no database dump")
    command = ["mariadb", f"--socket={config.galera.socket}", "--user=root", "--binary-mode"]
    log.info("restoring the database from %s", directory / DATABASE_FILE)
    stderr = _load_dump(command, directory / DATABASE_FILE, timeout)
    if stderr is not None:
        raise BackupError(f"loading {directory / DATABASE_FILE} failed: {stderr}")


def _load_dump(command: list[str], dump: Path, timeout: float) -> str | None:
    """Decompress `dump` straight into the client's stdin; return None on success, else the error.

    Nothing is written next to the backup, so a read-only backup medium works and an interrupted
    restore leaves no file behind.
    """
    feed_error: list[str] = []
    with tempfile.TemporaryFile() as errors:
        try:
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors)
        except FileNotFoundError:
            raise BackupError(f"{command[0]} not found; install mariadb-client") from None
        feeder = threading.Thread(target=_feed, args=(dump, process, feed_error), name="restore-feed", daemon=True)
        feeder.start()
        try:
            returncode = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise BackupError(f"{command[0]} timed out after {timeout:.0f} s") from None
        finally:
            feeder.join()
        errors.seek(0)
        message = " | ".join(errors.read().decode("utf-8", "replace").strip().splitlines()[-3:])
    if feed_error:
        return feed_error[0]
    if returncode != 0:
        return message or f"exit status {returncode}"
    return None


def _feed(dump: Path, process: subprocess.Popen[bytes], error: list[str]) -> None:
    stdin = process.stdin
    if stdin is None:
        return
    try:
        with gzip.open(dump, "rb") as packed:
            shutil.copyfileobj(packed, stdin, CHUNK)
    except BrokenPipeError:
        # The client exited early; its exit status and stderr say why.
        pass
    except (OSError, EOFError) as problem:
        error.append(f"{dump} could not be decompressed ({problem}); the backup is damaged")
        process.kill()
    finally:
        with contextlib.suppress(BrokenPipeError):
            stdin.close()


def restore_mail_data(config: NodeConfig, directory: Path, *, timeout: float = DUMP_TIMEOUT) -> None:
    """Extract the mail archive onto the mounted shared volume of the master.

    Rejects a volume whose project directory already contains files, so a restore never mixes
    with live data. Stop mailcow and restore onto a volume prepared by `init-data`.
    """
    on_master, reason = is_master_here(config)
    if not on_master:
        raise Refused(f"mail data can only be restored on the master: {reason}")
    manifest = read_manifest(directory)
    if MAIL_FILE not in manifest["sha256"]:
        raise BackupError(f"{directory} contains no mail data archive")
    project_dir = config.paths.mount_point / config.mailcow.project_name
    existing = [path for path in project_dir.rglob("*") if path.is_file()] if project_dir.exists() else []
    if existing:
        raise Refused(
            f"{project_dir} already contains files ({existing[0]}, ...); restore onto an empty volume "
            "prepared with `mailcow-ha init-data`"
        )
    command = [
        "tar",
        "--extract",
        f"--file={directory / MAIL_FILE}",
        "--numeric-owner",
        "--same-permissions",
        "--acls",
        "--xattrs",
        f"--directory={config.paths.mount_point}",
    ]
    stderr = _run(command, timeout, "tar")
    if stderr is not None:
        raise BackupError(f"extracting {directory / MAIL_FILE} failed: {stderr}")


def _run(
    command: list[str],
    timeout: float,
    tool: str,
    *,
    stdout: IO[bytes] | None = None,
    stdin: IO[bytes] | None = None,
    accepted: tuple[int, ...] = (0,),
) -> str | None:
    """Run a tool with a timeout; return None on success, else its last stderr lines."""
    try:
        result = subprocess.run(
            command, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, timeout=timeout, check=False
        )
    except FileNotFoundError:
        raise BackupError(f"{tool} not found; install mariadb-client and tar") from None
    except subprocess.TimeoutExpired:
        raise BackupError(f"{tool} timed out after {timeout:.0f} s") from None
    message = " | ".join(result.stderr.decode("utf-8", "replace").strip().splitlines()[-3:])
    if result.returncode not in accepted:
        return message or f"exit status {result.returncode}"
    if result.returncode != 0:
        # tar exits 1 when a file changed while it was read, which is expected on a live mail server.
        log.warning("%s reported changes during the copy: %s", tool, message)
    return None


def _private_file(path: Path) -> IO[bytes]:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    return os.fdopen(descriptor, "wb")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as stream:
            for chunk in iter(lambda: stream.read(CHUNK), b""):
                digest.update(chunk)
    except OSError as error:
        raise BackupError(f"{path} could not be read: {error.strerror}") from None
    return digest.hexdigest()
