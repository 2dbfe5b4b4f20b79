"""Fixtures shared by the integration tests. Each is defined next to its helper in tests/harness."""

from harness.galera import galera, galera_cluster
from harness.podman import podman

__all__ = ["galera", "galera_cluster", "podman"]
