"""Watch the engine's event stream for the mailcow compose project's containers.

The engine reports a container that dies at once, so the agent re-runs the container probe
without waiting for its next poll. The stream uses a dedicated Engine, because an open stream
keeps its HTTP connection busy. After the stream breaks it is reopened with a growing pause, and
while it is down the agent's periodic container poll is the only source.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from mailcow_ha.adapters.engine import ContainerEvent, Engine, EventStream
from mailcow_ha.errors import EngineError

log = logging.getLogger(__name__)

RELEVANT_ACTIONS = frozenset(
    {"create", "start", "restart", "die", "stop", "kill", "oom", "pause", "unpause", "destroy"}
)
"""Actions that change whether a container runs. `health_status: ...` actions are relevant too."""
RECONNECT_INITIAL = 1.0
RECONNECT_MAX = 30.0


class StreamConnected:
    """Passed to `on_event` each time the stream (re)opens: events may have been missed before it."""


STREAM_CONNECTED = StreamConnected()


def is_relevant(event: ContainerEvent) -> bool:
    return event.action in RELEVANT_ACTIONS or event.action.startswith("health_status")


class EventWatcher:
    """A thread that passes the project's relevant container events to `on_event`.

    After every (re)connection it passes STREAM_CONNECTED, so the agent re-runs the container
    probe for whatever happened while the stream was closed.
    """

    def __init__(
        self, engine: Engine, project: str, on_event: Callable[[ContainerEvent | StreamConnected], None]
    ) -> None:
        self.engine = engine
        self.project = project
        self._on_event = on_event
        self._stop = threading.Event()
        self._stream: EventStream | None = None
        self._lock = threading.Lock()
        self.connected = False
        self.events_seen = 0
        self._thread = threading.Thread(target=self._run, name="mailcow-ha-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.close()
        self._thread.join(timeout)
        self.engine.close()

    def _run(self) -> None:
        pause = RECONNECT_INITIAL
        while not self._stop.is_set():
            try:
                stream = self.engine.events(self.project)
            except EngineError as error:
                log.warning("container events unavailable: %s; retrying in %.0f s", error, pause)
                self._stop.wait(pause)
                pause = min(pause * 2, RECONNECT_MAX)
                continue
            with self._lock:
                self._stream = stream
            self.connected = True
            log.info("watching container events of compose project %s", self.project)
            self._on_event(STREAM_CONNECTED)
            try:
                for event in stream:
                    pause = RECONNECT_INITIAL
                    if not is_relevant(event):
                        continue
                    self.events_seen += 1
                    self._on_event(event)
            except EngineError as error:
                if not self._stop.is_set():
                    log.warning("%s; reopening in %.0f s", error, pause)
            finally:
                self.connected = False
                with self._lock:
                    self._stream = None
                stream.close()
            if not self._stop.is_set():
                if pause == RECONNECT_INITIAL:
                    log.warning("container event stream ended; reopening in %.0f s", pause)
                self._stop.wait(pause)
                pause = min(pause * 2, RECONNECT_MAX)
