"""The keepalived adapter: FIFO lines, the data dump, the track file, and the FIFO reader."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mailcow_ha.adapters.keepalived import (
    FifoMessage,
    FifoReader,
    HealthFile,
    KeepalivedError,
    KeepalivedProcess,
    dump_complete,
    open_fifo,
    parse_data_dump,
    parse_fifo_line,
)
from mailcow_ha.failover.transitions import VrrpState


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('INSTANCE "mailcow" MASTER 250', FifoMessage("INSTANCE", "mailcow", VrrpState.MASTER, 250)),
        ('INSTANCE "mailcow" FAULT 240\n', FifoMessage("INSTANCE", "mailcow", VrrpState.FAULT, 240)),
        ('GROUP "g1" BACKUP', FifoMessage("GROUP", "g1", VrrpState.BACKUP, None)),
        ('INSTANCE "mailcow" MASTER_RX_LOWER_PRI 250', None),
        ("VS [192.0.2.1]:tcp:80 UP", None),
        ("garbage", None),
        ("", None),
    ],
)
def test_parse_fifo_line(line: str, message: FifoMessage | None) -> None:
    assert parse_fifo_line(line) == message


DUMP = """------< Global definitions >------
 Router ID = node1
------< VRRP Topology >------
 VRRP Instance = other
   VRRP Version = 2
   State = BACKUP
 VRRP Instance = mailcow
   VRRP Version = 2
   State = MASTER
   Wantstate = MASTER
------< VRRP Sockpool >------
 fd_in 15 fd_out = 16
"""


def test_parse_data_dump_finds_instance() -> None:
    assert parse_data_dump(DUMP, "mailcow") is VrrpState.MASTER
    assert parse_data_dump(DUMP, "other") is VrrpState.BACKUP
    assert parse_data_dump(DUMP, "missing") is None
    assert parse_data_dump(DUMP.replace("State = MASTER", "State = INIT"), "mailcow") is None


def test_dump_complete_needs_later_section() -> None:
    assert dump_complete(DUMP)
    assert not dump_complete(DUMP.split("------< VRRP Sockpool", maxsplit=1)[0])
    assert not dump_complete("------< Global definitions >------\n")


def test_health_file_writes_and_ensures(tmp_path: Path) -> None:
    health = HealthFile(tmp_path / "run" / "health")

    first = health.ensure(True)
    second = health.ensure(True)
    (tmp_path / "run" / "health").write_text("1\n")
    third = health.ensure(True)

    assert (first, second, third) == (True, False, True)
    assert health.read() == 0
    health.write(False)
    assert health.read() == 1
    assert list((tmp_path / "run").iterdir()) == [tmp_path / "run" / "health"]


def test_health_file_reads_garbage_as_none(tmp_path: Path) -> None:
    path = tmp_path / "health"
    path.write_text("not a number")

    assert HealthFile(path).read() is None
    assert HealthFile(tmp_path / "absent").read() is None


def test_fifo_reader_drains_then_follows(tmp_path: Path) -> None:
    path = tmp_path / "keepalived.fifo"
    writer = open_fifo(path)
    os.write(writer, b'INSTANCE "mailcow" BACKUP 250\nINSTANCE "other" MASTER 1\nINSTANCE "mailcow" MA')
    received: list[FifoMessage] = []
    arrived = threading.Event()

    def collect(message: FifoMessage) -> None:
        received.append(message)
        arrived.set()

    reader = FifoReader(path, "mailcow", collect)
    try:
        drained = reader.drain()
        reader.start()
        os.write(writer, b'STER 250\nINSTANCE "mailcow" FAULT 250\n')
        assert arrived.wait(2)
        for _ in range(100):
            if len(received) == 2:
                break
            arrived.clear()
            arrived.wait(0.05)
    finally:
        reader.close()
        os.close(writer)

    assert [message.state for message in drained] == [VrrpState.BACKUP]
    assert [message.state for message in received] == [VrrpState.MASTER, VrrpState.FAULT]


def test_open_fifo_rejects_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "fifo"
    path.write_text("")

    with pytest.raises(KeepalivedError, match="is not a FIFO"):
        open_fifo(path)


def test_process_without_pid_file(tmp_path: Path) -> None:
    process = KeepalivedProcess(tmp_path / "keepalived.pid", tmp_path / "keepalived.data")

    assert process.pid() is None
    with pytest.raises(KeepalivedError, match="keepalived is not running"):
        process.reload()


def test_process_ignores_other_programs(tmp_path: Path) -> None:
    pid_file = tmp_path / "keepalived.pid"
    pid_file.write_text(f"{os.getpid()}\n")

    assert KeepalivedProcess(pid_file, tmp_path / "data").pid() is None


def test_dump_rejects_writable_file(tmp_path: Path) -> None:
    data = tmp_path / "keepalived.data"
    data.write_text(DUMP)
    data.chmod(0o666)

    with pytest.raises(KeepalivedError, match="not a keepalived dump"):
        KeepalivedProcess(tmp_path / "pid", data)._read_dump()


def test_dump_rejects_symlink(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text(DUMP)
    (tmp_path / "keepalived.data").symlink_to(target)

    with pytest.raises(KeepalivedError, match="symbolic link"):
        KeepalivedProcess(tmp_path / "pid", tmp_path / "keepalived.data")._read_dump()


def test_fifo_reader_follows_replaced_fifo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mailcow_ha.adapters.keepalived_fifo.PATH_CHECK_INTERVAL", 0.05)
    path = tmp_path / "keepalived.fifo"
    received: list[FifoMessage] = []
    reader = FifoReader(path, "mailcow", received.append)
    reader.start()
    try:
        path.unlink()
        writer = open_fifo(path)
        for _ in range(100):
            os.write(writer, b'INSTANCE "mailcow" MASTER 250\n')
            if received:
                break
            threading.Event().wait(0.05)
        os.close(writer)
    finally:
        reader.close()

    assert received
    assert received[0].state is VrrpState.MASTER


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_fifo_reader_survives_unexpected_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mailcow_ha.adapters.keepalived_fifo.ERROR_PAUSE", 0.05)
    path = tmp_path / "keepalived.fifo"
    writer = open_fifo(path)
    received: list[FifoMessage] = []
    reopened: list[str] = []
    reader = FifoReader(path, "mailcow", received.append, on_reopen=reopened.append)
    real_read = reader._read_messages
    failures = iter([RuntimeError("a bug in the reader")])

    def read_failing_once() -> list[FifoMessage]:
        error = next(failures, None)
        if error is not None:
            raise error
        return real_read()

    monkeypatch.setattr(reader, "_read_messages", read_failing_once)
    reader.start()
    try:
        os.write(writer, b'INSTANCE "mailcow" BACKUP 250\n')
        assert wait_until(lambda: bool(reopened))
        os.write(writer, b'INSTANCE "mailcow" MASTER 250\n')
        assert wait_until(lambda: len(received) == 2)
        alive = reader.alive
    finally:
        reader.close()
        os.close(writer)

    # The failed read took nothing out of the FIFO, so the reopened reader still gets BACKUP.
    assert alive
    assert [message.state for message in received] == [VrrpState.BACKUP, VrrpState.MASTER]
    assert reopened == ["the FIFO reader failed and reopened the FIFO"]


def test_fifo_reader_reads_old_fifo_before_switching(tmp_path: Path) -> None:
    path = tmp_path / "keepalived.fifo"
    first = open_fifo(path)
    received: list[FifoMessage] = []
    reopened: list[str] = []
    reader = FifoReader(path, "mailcow", received.append, on_reopen=reopened.append)
    reader.start()
    try:
        # keepalived's reload: the line before it goes into the old FIFO, the one after into the new.
        path.unlink()
        os.write(first, b'INSTANCE "mailcow" BACKUP 250\n')
        second = open_fifo(path)
        os.write(second, b'INSTANCE "mailcow" MASTER 250\n')
        assert wait_until(lambda: len(received) == 2)
    finally:
        reader.close()
        os.close(first)
        os.close(second)

    assert [message.state for message in received] == [VrrpState.BACKUP, VrrpState.MASTER]
    assert len(reopened) == 1
    assert reopened[0].startswith("keepalived's FIFO was replaced")
