"""A fake Hetzner Cloud API for tests and the lab, driven through the official `hcloud` client.

`FakeCloud` contains the state and enforces the real API's rules. `FakeCloudServer` serves it
over HTTP, and `python -m harness.fakecloud` runs it as a process. docs/fake-cloud-api.md describes the
endpoints, the rules, fault injection and the control API.
"""

from harness.fakecloud.errors import ApiError
from harness.fakecloud.faults import Fault
from harness.fakecloud.server import FakeCloudServer
from harness.fakecloud.store import FakeCloud

__all__ = ["ApiError", "FakeCloud", "FakeCloudServer", "Fault"]
