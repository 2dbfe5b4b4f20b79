"""The agent's link to keepalived's state: the FIFO reader, kept alive, and data dumps on a helper thread.

The FIFO is how the agent learns of transitions, so a reader that stops would leave the agent
deaf while keepalived makes the node MASTER. `supervise` replaces a reader whose thread ended,
and raises AgentFailure when a reader's loop has made no iteration for FIFO_STUCK_AFTER
seconds, so that the agent exits and systemd starts a new one.

A data dump (SIGUSR1) shows the state keepalived is in now. The agent asks for one when it does
not know the state (after a start), when the FIFO was replaced or its reader replaced (a
transition may have been lost), after its own membership sync reloaded keepalived, and every
`health.keepalived_state_check_interval` seconds. A dump waits up to DUMP_TIMEOUT seconds for
keepalived, so it runs on a helper thread and its result comes back through the agent's inbox:
the main loop never waits for keepalived.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from mailcow_ha.adapters.keepalived import FifoMessage, FifoReader, KeepalivedError, KeepalivedProcess
from mailcow_ha.config import NodeConfig
from mailcow_ha.deadline import Deadline
from mailcow_ha.errors import MailcowHaError
from mailcow_ha.failover.transitions import VrrpState

log = logging.getLogger(__name__)

DUMP_TIMEOUT = 3.0
"""Seconds a data dump waits for keepalived to write its dump file."""
FIFO_STUCK_AFTER = 10.0
"""Seconds without a loop iteration after which the FIFO reader counts as stuck.

The reader's loop wakes at least every PATH_CHECK_INTERVAL (0.5 s), so this only passes when
the thread hangs."""


class AgentFailure(MailcowHaError):
    """The agent cannot go on safely and exits, so that systemd starts a new one."""


class DumpPurpose(enum.StrEnum):
    """The reason the agent asked keepalived for a data dump."""

    LEARN = "learn"
    """The agent does not know keepalived's state yet."""
    RESYNC = "resync"
    """The agent compares keepalived's state with the one it acts on."""


@dataclass(frozen=True)
class DumpedState:
    """The result of one data dump, handed to the agent's main loop."""

    purpose: DumpPurpose
    reason: str
    state: VrrpState | None
    """The instance's state, None when the dump failed or did not name a state."""
    error: str | None
    messages_before: int
    """FIFO messages read when the dump was requested; a different count later means the FIFO is newer."""


@dataclass(frozen=True)
class FifoReopened:
    """The agent reads a new FIFO (keepalived replaced it, or its reader was replaced)."""

    reason: str


class KeepalivedLink:
    """The FIFO reader and the data dumps of one agent; results go to `post` (the agent's inbox)."""

    def __init__(
        self,
        config: NodeConfig,
        keepalived: KeepalivedProcess,
        post: Callable[[FifoMessage | DumpedState | FifoReopened], None],
    ) -> None:
        self._path = config.paths.keepalived_fifo
        self._instance = config.keepalived.instance
        self._keepalived = keepalived
        self._post = post
        self._messages = 0
        self._dump_lock = threading.Lock()
        self._dump_thread: threading.Thread | None = None
        self._next_dump: tuple[DumpPurpose, str] | None = None
        self._closing = False
        self.fifo = self._new_reader()
        self.replaced_readers = 0

    @property
    def messages(self) -> int:
        """How many FIFO messages of the instance the readers have passed on."""
        return self._messages

    def start(self) -> None:
        self.fifo.start()

    def drain(self) -> list[FifoMessage]:
        """Return the messages buffered in the FIFO before the reader starts."""
        messages = self.fifo.drain()
        self._messages += len(messages)
        return messages

    def fifo_quiet_since(self, messages_before: int) -> bool:
        """Return whether no FIFO message arrived or waits unread since the count was `messages_before`."""
        return self._messages == messages_before and self.fifo.pending_bytes() == 0

    def request_dump(self, purpose: DumpPurpose, reason: str) -> None:
        """Ask for a data dump on the helper thread; while one runs, one more follows it."""
        with self._dump_lock:
            if self._closing:
                return
            if self._dump_thread is not None:
                self._next_dump = (purpose, reason)
                return
            self._dump_thread = threading.Thread(
                target=self._dump_loop, args=(purpose, reason), name="mailcow-ha-keepalived-dump", daemon=True
            )
            self._dump_thread.start()

    def supervise(self) -> None:
        """Replace a FIFO reader whose thread ended; raise AgentFailure for one that hangs."""
        if not self.fifo.alive:
            self._replace_reader()
            return
        silent = self.fifo.silent_for()
        if silent > FIFO_STUCK_AFTER:
            raise AgentFailure(
                f"keepalived's FIFO reader for {self._path} has hung for {silent:.0f} s, so this agent would miss "
                "transitions; the agent exits so that systemd starts a new one"
            )

    def close(self, timeout: float = 2.0) -> None:
        with self._dump_lock:
            self._closing = True
            thread = self._dump_thread
        self.fifo.close(timeout)
        if thread is not None:
            thread.join(timeout)

    def _new_reader(self) -> FifoReader:
        return FifoReader(self._path, self._instance, self._pass_message, on_reopen=self._reopened)

    def _pass_message(self, message: FifoMessage) -> None:
        self._messages += 1
        self._post(message)

    def _reopened(self, reason: str) -> None:
        self._post(FifoReopened(reason))

    def _replace_reader(self) -> None:
        log.error("keepalived's FIFO reader for %s has stopped; starting a new one", self._path)
        try:
            reader = self._new_reader()
        except KeepalivedError as error:
            log.error("%s; the agent tries again at its next pass", error)
            return
        old, self.fifo = self.fifo, reader
        reader.start()
        old.close(timeout=0.0)
        self.replaced_readers += 1
        self._post(FifoReopened("the FIFO reader had stopped and a new one reads the FIFO"))

    def _dump_loop(self, purpose: DumpPurpose, reason: str) -> None:
        while True:
            self._post(self._dump(purpose, reason))
            with self._dump_lock:
                following = self._next_dump
                self._next_dump = None
                if following is None or self._closing:
                    self._dump_thread = None
                    return
            purpose, reason = following

    def _dump(self, purpose: DumpPurpose, reason: str) -> DumpedState:
        messages_before = self._messages
        try:
            state = self._keepalived.dump_state(self._instance, Deadline.after("keepalived data dump", DUMP_TIMEOUT))
        except KeepalivedError as error:
            log.warning("could not read keepalived's state (%s): %s", reason, error)
            return DumpedState(purpose, reason, None, str(error), messages_before)
        return DumpedState(purpose, reason, state, None, messages_before)
