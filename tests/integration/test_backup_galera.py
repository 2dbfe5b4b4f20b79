"""Backup and restore of mailcow's database on real Galera and of mail data on a real ext4 volume."""

from __future__ import annotations

import contextlib
import gzip
import os
import random
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.galera import GaleraCluster
from harness.loopdev import LoopVolume, private_mount_namespace
from harness.nodeconfig import deep_update, node_config_dict, write_node_config
from mailcow_ha.cli import main
from mailcow_ha.config import NodeConfig, parse_config
from mailcow_ha.errors import ExitCode, Refused
from mailcow_ha.mailcow import backup
from mailcow_ha.mailcow.initdata import InitRequest, init_data

pytestmark = pytest.mark.integration

PROJECT = "mailcowdockerized"


@pytest.fixture(autouse=True)
def own_mount_namespace() -> Iterator[None]:
    """Keep each test's mounts out of the namespaces that concurrent test runs create."""
    with private_mount_namespace():
        yield


@pytest.fixture
def mailcow_db(galera: GaleraCluster) -> Iterator[str]:
    schema = f"mailcow_backup_{os.getpid()}_{random.randrange(10000)}"
    galera.nodes[0].execute(
        f"CREATE DATABASE {schema}",
        f"CREATE TABLE {schema}.mailbox (username VARCHAR(255) PRIMARY KEY, quota BIGINT, attributes JSON)",
        f"INSERT INTO {schema}.mailbox VALUES ('alice@example.org', 1073741824, '{{\"tls\": 1}}')",
        f"INSERT INTO {schema}.mailbox VALUES ('bob@example.org', 0, NULL)",
        f"CREATE TABLE {schema}.logs (id INT AUTO_INCREMENT PRIMARY KEY, message BLOB)",
        f"INSERT INTO {schema}.logs (message) VALUES (UNHEX('00FF10'))",
    )
    try:
        yield schema
    finally:
        galera.nodes[0].execute(f"DROP DATABASE IF EXISTS {schema}")


def make_config(socket: Path, schema: str, mount_point: Path) -> NodeConfig:
    document = deep_update(node_config_dict(), "galera.socket", str(socket))
    document = deep_update(document, "mailcow", {"db_name": schema})
    document = deep_update(document, "paths", {"mount_point": str(mount_point)})
    return parse_config(document)


def test_database_round_trip_across_members(galera, mailcow_db, tmp_path):
    node1, node2, node3 = galera.nodes
    config = make_config(node2.socket, mailcow_db, tmp_path / "not-mounted")

    result = backup.run_backup(config, tmp_path / "backups", mail=False)

    assert set(result.files) == {backup.DATABASE_FILE}
    dump = gzip.decompress((result.directory / backup.DATABASE_FILE).read_bytes()).decode()
    assert f"CREATE DATABASE /*!32312 IF NOT EXISTS*/ `{mailcow_db}`" in dump
    assert oct((result.directory / backup.DATABASE_FILE).stat().st_mode & 0o777) == oct(0o600)
    assert oct(result.directory.stat().st_mode & 0o777) == oct(0o700)

    node1.execute(f"DROP DATABASE {mailcow_db}")
    backup.restore_database(make_config(node3.socket, mailcow_db, tmp_path), result.directory)

    rows = node1.execute(f"SELECT username, quota FROM {mailcow_db}.mailbox ORDER BY username")
    assert rows == [("alice@example.org", 1073741824), ("bob@example.org", 0)]
    assert node2.execute(f"SELECT HEX(message) FROM {mailcow_db}.logs") == [("00FF10",)]


def test_mail_backup_on_standby_names_master(galera, mailcow_db, tmp_path):
    config = make_config(galera.nodes[0].socket, mailcow_db, tmp_path / "not-mounted")

    with pytest.raises(Refused, match="run it on mailcow-ha-test-2, the master"):
        backup.run_backup(config, tmp_path / "backups", find_master=lambda: "mailcow-ha-test-2")

    assert not (tmp_path / "backups").exists()


def test_damaged_backup_rejected(galera, mailcow_db, tmp_path):
    config = make_config(galera.nodes[0].socket, mailcow_db, tmp_path)
    result = backup.run_backup(config, tmp_path / "backups", mail=False)
    dump = result.directory / backup.DATABASE_FILE
    damaged = bytearray(dump.read_bytes())
    damaged[-1] ^= 0xFF
    dump.write_bytes(bytes(damaged))

    with pytest.raises(backup.BackupError, match="does not match its SHA-256"):
        backup.restore_database(config, result.directory)


def test_cli_backup_database_only(galera, mailcow_db, tmp_path, capsys):
    document = deep_update(node_config_dict(), "galera.socket", str(galera.nodes[2].socket))
    document = deep_update(document, "mailcow", {"db_name": mailcow_db})
    config = str(write_node_config(tmp_path / "node.yaml", document))

    code = main(["--config", config, "backup", "--to", str(tmp_path / "out"), "--database-only"])

    assert code == ExitCode.OK
    assert "database.sql.gz  sha256" in capsys.readouterr().out
    assert main(["--config", config, "restore", "--from", str(tmp_path)]) == ExitCode.USAGE


class LoopMount:
    """An ext4 loop device prepared by init-data and mounted, as on the master."""

    def __init__(self, directory: Path, mount_point: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.image = directory / f"backup-volume-{os.getpid()}-{uuid.uuid4().hex[:8]}.img"
        self.mount_point = mount_point
        self.device: Path | None = None
        self.mounted = False
        try:
            subprocess.run(["truncate", "-s", "64M", str(self.image)], check=True, timeout=30)
            output = subprocess.run(
                ["losetup", "--find", "--show", str(self.image)], check=True, capture_output=True, text=True, timeout=30
            )
            self.device = Path(output.stdout.strip())
            subprocess.run(["mkfs.ext4", "-q", str(self.device)], check=True, timeout=60)
            init_data(
                InitRequest(
                    self.device, "mailcow-ha-test", 301, PROJECT, mmp_update_interval=1, work_dir=directory / "run"
                )
            )
            mount_point.mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", str(self.device), str(mount_point)], check=True, timeout=60)
            self.mounted = True
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", str(self.mount_point)], check=False, timeout=60)
            self.mounted = False
        if self.device is not None:
            subprocess.run(["losetup", "-d", str(self.device)], check=False, timeout=30)
            self.device = None
        self.image.unlink(missing_ok=True)


@pytest.fixture
def master_volume(tmp_path: Path) -> Iterator[LoopMount]:
    volume = LoopMount(tmp_path, tmp_path / "mnt")
    try:
        yield volume
    finally:
        volume.close()


def test_mail_data_round_trip(galera, mailcow_db, tmp_path, master_volume):
    config = make_config(galera.nodes[0].socket, mailcow_db, master_volume.mount_point)
    maildir = master_volume.mount_point / PROJECT / "vmail-vol-1" / "example.org" / "alice" / "cur"
    maildir.mkdir(parents=True)
    message = maildir / "1700000000.M1P1.mail:2,S"
    message.write_text("Subject: hello\n\nbody\n")
    os.chown(message, 5000, 5000)

    result = backup.run_backup(config, tmp_path / "backups")

    assert set(result.files) == {backup.DATABASE_FILE, backup.MAIL_FILE}
    listing = subprocess.run(
        ["tar", "--list", f"--file={result.directory / backup.MAIL_FILE}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert f"{PROJECT}/vmail-vol-1/example.org/alice/cur/1700000000.M1P1.mail:2,S" in listing
    assert ".mailcow-ha" not in listing

    with pytest.raises(Refused, match="already contains files"):
        backup.restore_mail_data(config, result.directory)

    master_volume.close()
    fresh = LoopMount(tmp_path / "fresh", tmp_path / "fresh-mnt")
    try:
        backup.restore_mail_data(make_config(galera.nodes[0].socket, mailcow_db, fresh.mount_point), result.directory)
        restored = fresh.mount_point / PROJECT / "vmail-vol-1" / "example.org" / "alice" / "cur" / message.name
        assert restored.read_text() == "Subject: hello\n\nbody\n"
        assert restored.stat().st_uid == 5000
    finally:
        fresh.close()


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """Make `directory` a read-only bind mount of itself, in this test's own mount namespace."""
    subprocess.run(["mount", "--bind", str(directory), str(directory)], check=True, timeout=30)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(directory)], check=True, timeout=30)
        yield
    finally:
        subprocess.run(["umount", str(directory)], check=False, timeout=30)


def test_unwritable_backup_directory_rejected(galera, mailcow_db, tmp_path, capsys):
    document = deep_update(node_config_dict(), "galera.socket", str(galera.nodes[0].socket))
    document = deep_update(document, "mailcow", {"db_name": mailcow_db})
    config = str(write_node_config(tmp_path / "node.yaml", document))
    target = tmp_path / "read-only"
    target.mkdir()

    with read_only(target):
        code = main(["--config", config, "backup", "--to", str(target), "--database-only"])

    assert code == ExitCode.FAILED
    assert "could not be created: Read-only file system" in capsys.readouterr().err
    assert list(target.iterdir()) == []


def test_full_disk_leaves_no_partial_backup(galera, mailcow_db, tmp_path):
    config = make_config(galera.nodes[0].socket, mailcow_db, tmp_path / "not-mounted")
    galera.nodes[0].execute(
        f"CREATE TABLE {mailcow_db}.quarantine (id INT AUTO_INCREMENT PRIMARY KEY, msg LONGBLOB)",
        f"INSERT INTO {mailcow_db}.quarantine (msg) VALUES (REPEAT(SHA2(RAND(), 512), 4096))",
    )
    volume = LoopVolume.create(size_mb=8, mmp=False, parent=tmp_path)
    try:
        disk = tmp_path / "small-disk"
        disk.mkdir()
        subprocess.run(["mount", str(volume.device), str(disk)], check=True, timeout=30)
        try:
            (disk / "backups").mkdir()
            fill_until_kib_left(disk / "filler", 256)

            with pytest.raises(backup.BackupError) as failed:
                backup.run_backup(config, disk / "backups", mail=False)

            leftovers = list((disk / "backups").iterdir())
        finally:
            subprocess.run(["umount", str(disk)], check=False, timeout=30)
    finally:
        volume.close()

    assert "errno 28" in str(failed.value)
    assert "was removed" in str(failed.value)
    assert leftovers == []


def fill_until_kib_left(path: Path, kib: int) -> None:
    free = os.statvfs(path.parent)
    size = free.f_bavail * free.f_frsize - kib * 1024
    with path.open("wb") as stream:
        stream.truncate(0)
        os.posix_fallocate(stream.fileno(), 0, size)


def test_restore_from_read_only_backup(galera, mailcow_db, tmp_path):
    config = make_config(galera.nodes[0].socket, mailcow_db, tmp_path / "not-mounted")
    result = backup.run_backup(config, tmp_path / "backups", mail=False)
    galera.nodes[0].execute(f"DELETE FROM {mailcow_db}.mailbox WHERE username = 'bob@example.org'")

    with read_only(result.directory):
        backup.restore_database(config, result.directory)

    rows = galera.nodes[1].execute(f"SELECT username FROM {mailcow_db}.mailbox ORDER BY username")
    assert rows == [("alice@example.org",), ("bob@example.org",)]
    assert sorted(path.name for path in result.directory.iterdir()) == [backup.DATABASE_FILE, backup.MANIFEST_FILE]
