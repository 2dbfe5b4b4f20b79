"""Addresses on the node's network interfaces, read through rtnetlink and changed with `ip`.

The floating IP probe runs every second, so it reads addresses with one netlink dump request
(an RTM_GETADDR on an AF_NETLINK socket) instead of starting `ip`, which would cost a process
per run. Adding a missing address is rare and goes through `ip address add`.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import subprocess

from mailcow_ha.errors import MailcowHaError

IpInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

_RTM_NEWADDR = 20
_RTM_GETADDR = 22
_NLM_F_REQUEST = 0x1
_NLM_F_DUMP = 0x300
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_IFA_ADDRESS = 1
_IFA_LOCAL = 2
_NLMSG_HEADER = struct.Struct("=IHHII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTATTR = struct.Struct("=HH")
_RECEIVE_TIMEOUT = 2.0


class NetworkInterfaceError(MailcowHaError):
    """An interface is missing, or its addresses could not be read or changed."""


def _align(length: int) -> int:
    return (length + 3) & ~3


def parse_address_messages(data: bytes, index: int) -> tuple[list[IpInterface], bool]:
    """Parse RTM_NEWADDR messages of interface `index`; also return whether the dump ended (NLMSG_DONE)."""
    found: list[IpInterface] = []
    offset = 0
    while offset + _NLMSG_HEADER.size <= len(data):
        length, kind, _, _, _ = _NLMSG_HEADER.unpack_from(data, offset)
        if length < _NLMSG_HEADER.size:
            break
        body = data[offset + _NLMSG_HEADER.size : offset + length]
        offset += _align(length)
        if kind == _NLMSG_DONE:
            return found, True
        if kind == _NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", body)
            if code != 0:
                raise NetworkInterfaceError(f"reading addresses failed: {os.strerror(-code)}")
            continue
        if kind != _RTM_NEWADDR or len(body) < _IFADDRMSG.size:
            continue
        family, prefix_length, _, _, address_index = _IFADDRMSG.unpack_from(body)
        if address_index != index:
            continue
        attributes = _attributes(body[_IFADDRMSG.size :])
        raw = attributes.get(_IFA_LOCAL) or attributes.get(_IFA_ADDRESS)
        if raw is None:
            continue
        address = socket.inet_ntop(family, raw)
        found.append(ipaddress.ip_interface(f"{address}/{prefix_length}"))
    return found, False


def _attributes(data: bytes) -> dict[int, bytes]:
    attributes: dict[int, bytes] = {}
    offset = 0
    while offset + _RTATTR.size <= len(data):
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size:
            break
        attributes[kind] = data[offset + _RTATTR.size : offset + length]
        offset += _align(length)
    return attributes


def interface_addresses(interface: str) -> list[IpInterface]:
    """Return every IPv4 and IPv6 address configured on `interface`, with its prefix length."""
    try:
        index = socket.if_nametoindex(interface)
    except OSError:
        raise NetworkInterfaceError(f"network interface {interface} not found; check node.public_interface") from None
    request = _NLMSG_HEADER.pack(
        _NLMSG_HEADER.size + _IFADDRMSG.size, _RTM_GETADDR, _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0
    ) + _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    found: list[IpInterface] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as netlink:
        netlink.settimeout(_RECEIVE_TIMEOUT)
        try:
            netlink.send(request)
            while True:
                addresses, done = parse_address_messages(netlink.recv(65536), index)
                found.extend(addresses)
                if done:
                    return found
        except OSError as error:
            raise NetworkInterfaceError(f"reading the addresses of {interface} failed: {error}") from None


def add_address(interface: str, address: IpInterface, *, timeout: float) -> None:
    """Configure `address` on `interface` (`ip address add`), as the node's network config does at boot."""
    argv = ["ip", "address", "add", str(address), "dev", interface]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise NetworkInterfaceError(f"`{' '.join(argv)}` timed out after {timeout:g} s") from None
    except OSError as error:
        raise NetworkInterfaceError(f"`{' '.join(argv)}` could not run: {error}") from None
    if result.returncode != 0 and "File exists" not in result.stderr:
        raise NetworkInterfaceError(f"`{' '.join(argv)}` failed: {result.stderr.strip()}")
