"""A pytest plugin that stops tests from sending traffic out of this host's network namespace.

Tests talk to fake clouds, agents and receivers on loopback, or to addresses inside network
namespaces they created. Anything else would reach a host that is not ours through the default
route. The plugin wraps `socket.socket`'s connect, connect_ex, sendto and sendmsg in the pytest
process. An IPv4 or IPv6 destination that is not loopback or the unspecified address raises
ForeignAddressError, unless the socket lives in another network namespace. Where the kernel does
not report a socket's namespace (SIOCGSKNS needs CAP_NET_ADMIN), the calling thread's counts.
Unix, netlink and other host-local sockets pass.

ForeignAddressError is a PermissionError, so the code under test handles it the way it handles
a firewall that rejects the packet. The test still fails: every blocked call is recorded and
turns the report of the test phase in which it happened into a failure naming the address.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import socket
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

SIOCGSKNS = 0x894C
"""ioctl that opens the network namespace of a socket (Linux 4.9+, needs CAP_NET_ADMIN)."""
_NO_TEST = "(no test running)"


class ForeignAddressError(PermissionError):
    """A test tried to reach an address outside this host from the host's network namespace."""


@dataclass(frozen=True)
class Violation:
    operation: str
    address: str
    test: str


def _namespace_of_path(path: str) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


def _namespace_of_socket(sock: socket.socket) -> tuple[int, int] | None:
    """Return the socket's network namespace, or None where the kernel does not report it."""
    try:
        descriptor = fcntl.ioctl(sock.fileno(), SIOCGSKNS)
    except OSError as error:
        if error.errno in (errno.EPERM, errno.EACCES, errno.ENOTTY, errno.EINVAL, errno.EBADF):
            return None
        raise
    try:
        info = os.fstat(descriptor)
    finally:
        os.close(descriptor)
    return info.st_dev, info.st_ino


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def destination_allowed(family: int, address: Any) -> tuple[bool, str]:
    """Decide whether a destination is on this host; returns (allowed, the address as text)."""
    if family not in (socket.AF_INET, socket.AF_INET6):
        return _other_family_allowed(family, address)
    if not isinstance(address, tuple) or not address:
        return False, repr(address)
    host = address[0]
    text = f"{host}:{address[1]}" if len(address) > 1 else str(host)
    if host in ("", "localhost"):
        return True, text
    literal = _ip_literal(str(host))
    if literal is None:
        # NOTE: a name is rejected rather than resolved, because resolving it may itself query a
        # DNS server of the host. Tests use IP literals or "localhost".
        return False, f"{text} (a host name; use an IP literal)"
    if isinstance(literal, ipaddress.IPv6Address) and literal.ipv4_mapped is not None:
        literal = literal.ipv4_mapped
    return literal.is_loopback or literal.is_unspecified, text


def _other_family_allowed(family: int, address: Any) -> tuple[bool, str]:
    # Unix and netlink sockets stay on this host; any other family (raw frames, vsock to the
    # hypervisor, ...) may leave it.
    if family in (socket.AF_UNIX, getattr(socket, "AF_NETLINK", socket.AF_UNIX)):
        return True, repr(address)
    if family == getattr(socket, "AF_PACKET", None):
        return False, f"raw frames on interface {address!r}"
    return False, f"{address!r} (address family {family})"


class NetworkGuard:
    """The socket wrappers and the record of what they blocked."""

    def __init__(self) -> None:
        self.host_namespace = _namespace_of_path("/proc/thread-self/ns/net")
        self.current_test = _NO_TEST
        self._lock = threading.Lock()
        self._violations: list[Violation] = []
        self._originals: dict[str, Callable[..., Any]] = {}

    def install(self) -> None:
        for name, position in (("connect", 0), ("connect_ex", 0), ("sendto", -1), ("sendmsg", 3)):
            original = getattr(socket.socket, name)
            self._originals[name] = original
            setattr(socket.socket, name, self._wrap(name, original, position))

    def uninstall(self) -> None:
        for name, original in self._originals.items():
            setattr(socket.socket, name, original)
        self._originals.clear()

    def take_violations(self) -> list[Violation]:
        """Return the calls blocked since the last call, and forget them."""
        with self._lock:
            violations, self._violations = self._violations, []
        return violations

    def _wrap(self, name: str, original: Callable[..., Any], position: int) -> Callable[..., Any]:
        guard = self

        def guarded(sock: socket.socket, *args: Any) -> Any:
            address = _destination(name, args, position)
            if address is not None:
                guard.check(sock, name, address)
            return original(sock, *args)

        guarded.__name__ = name
        guarded.__doc__ = original.__doc__
        return guarded

    def check(self, sock: socket.socket, operation: str, address: Any) -> None:
        """Raise ForeignAddressError when `address` is outside this host and the socket is in the host's namespace."""
        allowed, text = destination_allowed(sock.family, address)
        if allowed or not self._in_host_namespace(sock):
            return
        violation = Violation(operation, text, self.current_test)
        with self._lock:
            self._violations.append(violation)
        raise ForeignAddressError(
            errno.EPERM,
            f"network guard: {operation} to {text} from the host's network namespace in test "
            f"{violation.test}; tests may reach loopback or addresses inside their own namespaces only",
        )

    def _in_host_namespace(self, sock: socket.socket) -> bool:
        namespace = _namespace_of_socket(sock)
        if namespace is None:
            namespace = _namespace_of_path("/proc/thread-self/ns/net")
        return namespace == self.host_namespace


def _destination(name: str, args: tuple[Any, ...], position: int) -> Any:
    """Return the destination address of one call, or None when it has none (sendto/sendmsg on a connected socket)."""
    if name in ("connect", "connect_ex"):
        return args[0] if args else None
    if name == "sendto":
        # sendto(data, address) or sendto(data, flags, address)
        return args[-1] if len(args) >= 2 else None
    return args[position] if len(args) > position and args[position] is not None else None


class NetworkGuardPlugin:
    """Pytest hooks: name the running test, and fail each test phase in which the guard blocked a call.

    NOTE: only this process is guarded. Subprocesses the tests start (agents, keepalived,
    mariadbd, the fake cloud server) open their own sockets out of its reach.
    """

    def __init__(self) -> None:
        self.guard = NetworkGuard()
        self.outside_tests: list[Violation] = []

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self.guard.uninstall()

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Iterator[None]:
        self.outside_tests.extend(self.guard.take_violations())
        self.guard.current_test = item.nodeid
        try:
            yield
        finally:
            self.guard.current_test = _NO_TEST

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
        outcome = yield
        report: pytest.TestReport = outcome.get_result()
        violations = self.guard.take_violations()
        if not violations:
            return
        lines = [f"network guard blocked {v.operation} to {v.address} (in {v.test})" for v in violations]
        message = "\n".join(lines)
        if report.passed:
            report.outcome = "failed"
            report.longrepr = message
        else:
            report.sections.append(("network guard", message))

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.outside_tests.extend(self.guard.take_violations())
        if self.outside_tests and exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        for violation in self.outside_tests:
            terminalreporter.write_line(
                f"network guard blocked {violation.operation} to {violation.address} outside any test phase",
                red=True,
            )


PLUGIN_NAME = "mailcow-ha-network-guard"


def register(config: pytest.Config) -> NetworkGuardPlugin:
    """Register the plugin once per pytest run and return it."""
    existing = config.pluginmanager.get_plugin(PLUGIN_NAME)
    if isinstance(existing, NetworkGuardPlugin):
        return existing
    plugin = NetworkGuardPlugin()
    plugin.guard.install()
    config.pluginmanager.register(plugin, PLUGIN_NAME)
    return plugin


def pytest_configure(config: pytest.Config) -> None:
    """Load the guard with `pytest -p harness.netguard` where tests/conftest.py is not in effect."""
    register(config)
