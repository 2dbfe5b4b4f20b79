"""The lab's users: a mail client on the floating IP and a database writer on the private network.

Both record every attempt with its monotonic time and outcome. A mail counts as acknowledged
only when the server answered 250 to its DATA, which the lab's SMTP service sends after the
message file and its directory are fsync'd on the shared volume; a row counts once its
INSERT committed on a Primary Galera member. After a fault every acknowledged mail and row
must still be there (lab.invariants checks).
"""

from __future__ import annotations

import logging
import secrets
import smtplib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage

import pymysql

from lab.nsexec import join_network_namespace

log = logging.getLogger(__name__)

SMTP_PORT = 25


@dataclass(frozen=True)
class Attempt:
    """One mail sent or row written, successful or not."""

    started: float
    finished: float
    ok: bool
    key: str
    """The mail's Message-ID, or the row's id."""
    error: str = ""


class _Worker:
    """A background loop in a network namespace that records its attempts."""

    def __init__(self, namespace: str, interval: float, name: str) -> None:
        self.namespace = namespace
        self.interval = interval
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._attempts: list[Attempt] = []
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        join_network_namespace(self.namespace)
        while not self._stop.is_set():
            started = time.monotonic()
            attempt = self.attempt(started)
            with self._lock:
                self._attempts.append(attempt)
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def attempt(self, started: float) -> Attempt:
        raise NotImplementedError

    def attempts(self) -> list[Attempt]:
        with self._lock:
            return list(self._attempts)

    def acknowledged(self, before: float | None = None) -> list[str]:
        """Return the keys acknowledged (finished) before monotonic time `before` (default: all)."""
        return [a.key for a in self.attempts() if a.ok and (before is None or a.finished <= before)]

    def first_success_after(self, moment: float) -> Attempt | None:
        return next((a for a in self.attempts() if a.ok and a.started >= moment), None)

    def last_success_before(self, moment: float) -> Attempt | None:
        return next((a for a in reversed(self.attempts()) if a.ok and a.finished <= moment), None)


class MailClient(_Worker):
    """Sends one mail every `interval` seconds to the floating IP, from the client namespace."""

    def __init__(self, namespace: str, address: str, interval: float = 0.2, timeout: float = 1.0) -> None:
        super().__init__(namespace, interval, "lab-mail-client")
        self.address = address
        self.timeout = timeout
        self._sequence = 0

    def attempt(self, started: float) -> Attempt:
        self._sequence += 1
        message_id = f"<lab-{self._sequence}-{secrets.token_hex(4)}@client.lab>"
        message = EmailMessage()
        message["From"] = "client@client.lab"
        message["To"] = "postmaster@mail.lab.example"
        message["Subject"] = f"lab mail {self._sequence}"
        message["Message-ID"] = message_id
        message.set_content(f"mail number {self._sequence}\n")
        try:
            with smtplib.SMTP(self.address, SMTP_PORT, timeout=self.timeout) as connection:
                connection.send_message(message)
        except (OSError, smtplib.SMTPException) as error:
            return Attempt(started, time.monotonic(), False, message_id, f"{type(error).__name__}: {error}")
        return Attempt(started, time.monotonic(), True, message_id)


class DatabaseWriter(_Worker):
    """Inserts one row every `interval` seconds through a Galera member chosen by `target()`."""

    def __init__(
        self,
        namespace: str,
        target: Callable[[], list[str]],
        password: str,
        interval: float = 0.2,
        timeout: float = 1.0,
    ) -> None:
        super().__init__(namespace, interval, "lab-database-writer")
        self.target = target
        self.password = password
        self.timeout = timeout
        self._sequence = int(time.time() * 1000)
        self._connection: pymysql.connections.Connection[tuple[object, ...]] | None = None

    def _connect(self) -> pymysql.connections.Connection[tuple[object, ...]]:
        last_error: Exception | None = None
        for address in self.target():
            try:
                connection = pymysql.connect(
                    host=address,
                    user="lab",
                    password=self.password,
                    database="lab",
                    connect_timeout=self.timeout,
                    read_timeout=self.timeout,
                    write_timeout=self.timeout,
                    autocommit=True,
                )
            except (pymysql.MySQLError, OSError) as error:
                last_error = error
                continue
            with connection.cursor() as cursor:
                cursor.execute("CREATE TABLE IF NOT EXISTS writes (id BIGINT PRIMARY KEY, written DOUBLE NOT NULL)")
            return connection
        raise ConnectionError(f"no Galera member accepted a connection: {last_error}")

    def attempt(self, started: float) -> Attempt:
        self._sequence += 1
        key = str(self._sequence)
        try:
            if self._connection is None:
                self._connection = self._connect()
            with self._connection.cursor() as cursor:
                cursor.execute("INSERT INTO writes (id, written) VALUES (%s, %s)", (self._sequence, time.time()))
        except (pymysql.MySQLError, OSError) as error:
            if self._connection is not None:
                try:
                    self._connection.close()
                except (pymysql.MySQLError, OSError):
                    log.debug("closing a failed Galera connection failed too")
                self._connection = None
            return Attempt(started, time.monotonic(), False, key, f"{type(error).__name__}: {error}")
        return Attempt(started, time.monotonic(), True, key)
