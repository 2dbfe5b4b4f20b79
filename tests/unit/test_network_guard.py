"""The suite's network guard: loopback passes, any other address from the host's namespace is blocked."""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import netguard

CLONE_NEWNET = 0x40000000
TESTS_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture
def guard(request: pytest.FixtureRequest) -> Iterator[netguard.NetworkGuard]:
    """The running guard; the calls a test provokes on purpose are taken off its record afterwards."""
    plugin = request.config.pluginmanager.get_plugin(netguard.PLUGIN_NAME)
    assert isinstance(plugin, netguard.NetworkGuardPlugin), "the guard is not loaded by tests/conftest.py"
    yield plugin.guard
    plugin.guard.take_violations()


def test_connect_to_foreign_address_rejected(guard: netguard.NetworkGuard) -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock,
        pytest.raises(netguard.ForeignAddressError) as raised,
    ):
        sock.connect(("10.0.1.11", 7780))

    assert "10.0.1.11:7780" in str(raised.value)
    assert "test_connect_to_foreign_address_rejected" in str(raised.value)
    violations = guard.take_violations()
    assert [(v.operation, v.address) for v in violations] == [("connect", "10.0.1.11:7780")]


def test_connect_to_loopback_allowed(guard: netguard.NetworkGuard) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=2.0) as client:
            accepted, _ = server.accept()
            accepted.close()

            assert client.getpeername() == server.getsockname()
    assert guard.take_violations() == []


@pytest.mark.parametrize(
    ("family", "call"),
    [
        (socket.AF_INET, lambda sock: sock.connect_ex(("10.0.1.12", 7780))),
        (socket.AF_INET, lambda sock: sock.sendto(b"x", ("10.0.1.13", 112))),
        (socket.AF_INET, lambda sock: sock.sendto(b"x", 0, ("169.254.169.254", 80))),
        (socket.AF_INET, lambda sock: sock.sendmsg([b"x"], [], 0, ("192.0.2.1", 9))),
        (socket.AF_INET, lambda sock: sock.connect(("example.org", 80))),
        (socket.AF_INET6, lambda sock: sock.sendto(b"x", ("2001:db8::1", 9))),
    ],
    ids=["connect_ex", "sendto", "sendto-flags", "sendmsg", "host-name", "ipv6"],
)
def test_datagram_and_other_calls_rejected(guard, family, call) -> None:
    with socket.socket(family, socket.SOCK_DGRAM) as sock, pytest.raises(netguard.ForeignAddressError):
        call(sock)

    assert len(guard.take_violations()) == 1


@pytest.mark.parametrize(
    ("family", "address"),
    [
        (socket.AF_INET, ("127.0.1.12", 9)),
        (socket.AF_INET, ("0.0.0.0", 9)),
        (socket.AF_INET, ("localhost", 9)),
        (socket.AF_INET6, ("::1", 9)),
        (socket.AF_INET6, ("::ffff:127.0.0.1", 9)),
        (socket.AF_UNIX, "/run/test.sock"),
        (socket.AF_NETLINK, (0, 0)),
    ],
)
def test_local_destinations_allowed(family, address) -> None:
    allowed, _ = netguard.destination_allowed(family, address)

    assert allowed


def test_other_address_families_rejected() -> None:
    # vsock reaches the hypervisor, not this host.
    allowed, text = netguard.destination_allowed(socket.AF_VSOCK, (2, 1024))

    assert not allowed
    assert "address family" in text


def test_unix_socket_allowed(guard: netguard.NetworkGuard, tmp_path: Path) -> None:
    path = str(tmp_path / "guard.sock")
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender,
    ):
        receiver.bind(path)
        sender.sendto(b"ping", path)

        assert receiver.recv(16) == b"ping"
    assert guard.take_violations() == []


@pytest.mark.skipif(os.geteuid() != 0, reason="entering a new network namespace needs root")
def test_thread_in_own_namespace_allowed(guard: netguard.NetworkGuard) -> None:
    outcome: list[BaseException | None] = []

    def connect_from_new_namespace() -> None:
        # unshare(CLONE_NEWNET) moves this thread alone into a new namespace with only a down
        # loopback, which disappears when the thread ends.
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWNET) != 0:
            outcome.append(OSError(ctypes.get_errno(), "unshare failed"))
            return
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.connect(("10.0.1.11", 7780))
            except OSError as error:
                outcome.append(error)
                return
        outcome.append(None)

    thread = threading.Thread(target=connect_from_new_namespace, name="guard-netns")
    thread.start()
    thread.join(10.0)

    assert not thread.is_alive()
    assert len(outcome) == 1
    assert not isinstance(outcome[0], netguard.ForeignAddressError)
    assert isinstance(outcome[0], OSError)
    assert outcome[0].errno == errno.ENETUNREACH
    assert guard.take_violations() == []


def test_blocked_call_fails_test(tmp_path: Path) -> None:
    test_file = tmp_path / "test_inner.py"
    test_file.write_text(
        textwrap.dedent(
            """
            import socket

            def test_swallows_the_error():
                with socket.socket() as sock:
                    sock.settimeout(0.5)
                    try:
                        sock.connect(("192.0.2.1", 9))
                    except OSError:
                        pass
            """
        ),
        encoding="utf-8",
    )
    environment = {**os.environ, "PYTHONPATH": str(TESTS_DIR)}

    finished = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "harness.netguard", str(test_file)],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert finished.returncode == 1, finished.stdout + finished.stderr
    assert "network guard blocked connect to 192.0.2.1:9" in finished.stdout
    assert "test_inner.py::test_swallows_the_error" in finished.stdout
