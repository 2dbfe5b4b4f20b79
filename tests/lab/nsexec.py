"""Run Python code in another network namespace from a thread of this process.

`setns(CLONE_NEWNET)` changes the namespace of the calling thread only, and a socket stays in
the namespace it was created in. So a worker thread that joins a namespace once can open
connections there (SMTP to the floating IP from the client namespace, SQL to Galera from the
ops namespace, HTTP to the fake cloud) without a subprocess per call.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import os
from collections.abc import Callable
from typing import TypeVar

from lab.shell import LabError

CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)
_Result = TypeVar("_Result")


def join_network_namespace(name: str) -> None:
    """Move the calling thread into the network namespace /run/netns/NAME."""
    try:
        descriptor = os.open(f"/run/netns/{name}", os.O_RDONLY)
    except FileNotFoundError:
        raise LabError(f"network namespace {name} not found; is the lab up?") from None
    try:
        if _libc.setns(descriptor, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise LabError(f"setns into network namespace {name} failed: {os.strerror(error)}")
    finally:
        os.close(descriptor)


class NamespaceExecutor:
    """A pool of worker threads that live in one network namespace."""

    def __init__(self, namespace: str, workers: int = 1) -> None:
        self.namespace = namespace
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers,
            thread_name_prefix=f"netns-{namespace}",
            initializer=join_network_namespace,
            initargs=(namespace,),
        )

    def submit(self, function: Callable[..., _Result], *args: object) -> concurrent.futures.Future[_Result]:
        """Start `function(*args)` in the namespace and return its future."""
        return self._pool.submit(function, *args)

    def call(self, function: Callable[..., _Result], *args: object, timeout: float = 30.0) -> _Result:
        """Run `function(*args)` in the namespace and return its result, waiting at most `timeout` s."""
        future = self._pool.submit(function, *args)
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            raise LabError(f"call in network namespace {self.namespace} timed out after {timeout:g} s") from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
