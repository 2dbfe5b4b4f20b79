"""The exception root of mailcow-ha and the exit codes that keepalived and systemd rely on.

Library errors (hcloud, docker, pymysql, OSError from mount and the like) are converted into
these where they enter the package, in the adapter modules, so callers handle one family.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Process exit status of every `mailcow-ha` command.

    keepalived and systemd read these: any non-zero status from a promote makes the node go
    FAULT so that another node takes over, and systemd restarts the agent on a non-zero exit.
    """

    OK = 0
    FAILED = 1
    """The command ran and its operation failed (a promote step, an unmount, a check)."""
    USAGE = 2
    """Invalid command line (argparse uses 2 as well)."""
    CONFIG = 3
    """The node config or stack config is missing or invalid."""
    DEGRADED = 4
    """`status` found the cluster degraded, or a check found problems to act on."""
    REFUSED = 5
    """The operation was rejected by a safety rule (circuit breaker, maintenance, quorum)."""
    SUPERSEDED = 6
    """A newer keepalived transition arrived and this one stopped at a step boundary."""


class MailcowHaError(Exception):
    """Root of every error raised by mailcow-ha.

    The message names what failed, on which value, and what to do next. It never contains a
    secret: adapters build messages from ids and public values only.
    """

    exit_code: ExitCode = ExitCode.FAILED


class ConfigError(MailcowHaError):
    """A node config or stack config value is missing or invalid."""

    exit_code = ExitCode.CONFIG


class StateError(MailcowHaError):
    """A file in the state directory is unreadable or corrupt."""


class CloudError(MailcowHaError):
    """A Hetzner Cloud API call failed after its retries, or its action ended in error."""

    def __init__(self, message: str, *, code: str | None = None, correlation_id: str | None = None):
        super().__init__(message)
        self.code = code
        self.correlation_id = correlation_id


class DeadlineExceeded(MailcowHaError):
    """A bounded wait reached its deadline."""


class EngineError(MailcowHaError):
    """The container engine (Docker API) rejected a call or a container did not become healthy."""


class BlockDeviceError(MailcowHaError):
    """A device did not appear, had the wrong file system, or would not mount or unmount."""


class DatabaseError(MailcowHaError):
    """The local MariaDB Galera member could not be queried."""


class Refused(MailcowHaError):
    """A safety rule rejected the operation; the message says which rule and how to clear it."""

    exit_code = ExitCode.REFUSED


class Superseded(MailcowHaError):
    """A newer keepalived state arrived while a transition ran; it stopped at a step boundary."""

    exit_code = ExitCode.SUPERSEDED
