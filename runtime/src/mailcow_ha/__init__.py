"""mailcow-ha: active/passive failover for mailcow-dockerized on Hetzner Cloud."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mailcow-ha")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
