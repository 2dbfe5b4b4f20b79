"""Alerts through Apprise: queued, rate-limited per event, never blocking or raising into a caller.

`send()` only puts the alert on a bounded queue; a background thread decides whether it is a
repeat, formats it and delivers it to every configured Apprise URL with a short timeout. Repeats
of one event (and subject) inside `alerts.repeat_interval` are suppressed; when the interval ends
a digest says how many were suppressed, and the next regular message carries the count too. The
rate-limit state and the delivery counters live in the state directory under a file lock, so a
restarted agent or a CLI command on the same node does not send the same alert again.

Alert URLs are secrets (they carry webhook tokens and passwords). They never reach our logs, and
Apprise's own log records are capped at WARNING and masked, because several Apprise plugins log
the full URL at DEBUG level (apprise 2.3: custom_json logs "JSON POST URL: <url>").
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import SecretStr

from mailcow_ha import state
from mailcow_ha.alert_events import AlertEvent
from mailcow_ha.alert_format import Message, format_alert, format_digest
from mailcow_ha.alert_ratelimit import (
    ALERTS_STATE_FILE,
    SUBJECT_DETAIL,
    AlertState,
    AlertStateStore,
    RateAction,
    RateEntry,
    decide_rate,
    decode_state,
    digest_due,
    entry_expired,
    rate_key,
    valid_state,
)

if TYPE_CHECKING:
    from mailcow_ha.config import NodeConfig

__all__ = ["ALERTS_STATE_FILE", "SUBJECT_DETAIL", "AppriseAlerter", "Deliver", "mask_text", "secret_fragments"]

log = logging.getLogger(__name__)

_MIN_FRAGMENT = 4
_ALNUM_RUN = re.compile(rf"[A-Za-z0-9]{{{_MIN_FRAGMENT},}}")
_WAKEUP_CAP = 30.0


class _UrlMaskFilter(logging.Filter):
    """Replace fragments of alert URLs in log records with `***`.

    Installed on the `apprise` and `urllib3.connectionpool` loggers: both may write a request URL
    into a record (urllib3 logs the request path at DEBUG).
    """

    def __init__(self) -> None:
        super().__init__()
        self._fragments: set[str] = set()
        self._lock = threading.Lock()

    def add_url(self, url: str) -> None:
        with self._lock:
            self._fragments.update(secret_fragments(url))

    def filter(self, record: logging.LogRecord) -> bool:
        with self._lock:
            fragments = sorted(self._fragments, key=len, reverse=True)
        if not fragments:
            return True
        text = record.getMessage()
        masked = mask_text(text, fragments)
        if masked != text:
            record.msg, record.args = masked, None
        return True


def secret_fragments(url: str) -> set[str]:
    """Return the parts of an Apprise URL that may be secret: all but the scheme.

    Apprise schemes put tokens in the user, password, host, path and query alike (tgram:// has
    the bot token as its host), so every part is masked. Parts shorter than four characters
    are left alone because masking them would garble unrelated words.
    """
    fragments = {url}
    try:
        parts = urlsplit(url)
        candidates = [parts.netloc, parts.username or "", parts.password or "", parts.hostname or "", parts.fragment]
        segments = [segment for segment in parts.path.split("/") if segment]
        candidates += segments + [unquote(segment) for segment in segments]
        candidates += [value for _, value in parse_qsl(parts.query, keep_blank_values=False)]
        candidates += [pair.partition("=")[2] for pair in parts.query.split("&")]
    except ValueError:
        candidates = []
    # Libraries log URLs encoded differently (urllib3 logs `%2F` where the config has `/`), but
    # letters and digits survive any encoding, so their runs are masked too.
    runs = [run for candidate in candidates for run in _ALNUM_RUN.findall(unquote(candidate))]
    fragments.update(candidate for candidate in [*candidates, *runs] if len(candidate) >= _MIN_FRAGMENT)
    return fragments


def mask_text(text: str, fragments: Sequence[str]) -> str:
    """Replace each fragment in `text` with `***`, longest first."""
    for fragment in fragments:
        if fragment in text:
            text = text.replace(fragment, "***")
    return text


_MASK_FILTER = _UrlMaskFilter()
_MASKED_LOGGERS = ("apprise", "urllib3.connectionpool")


def _protect_library_logs(urls: Sequence[str]) -> None:
    for url in urls:
        _MASK_FILTER.add_url(url)
    for name in _MASKED_LOGGERS:
        library_logger = logging.getLogger(name)
        if _MASK_FILTER not in library_logger.filters:
            library_logger.addFilter(_MASK_FILTER)
    apprise_logger = logging.getLogger("apprise")
    if apprise_logger.getEffectiveLevel() < logging.WARNING:
        apprise_logger.setLevel(logging.WARNING)


@dataclass(frozen=True)
class _Queued:
    event: str
    reason: str
    details: dict[str, str]
    at: float


@dataclass
class _Retry:
    message: Message
    due: float
    attempt: int
    urls: list[int]


Deliver = Callable[[int, Message], bool]
"""Sends one message to the URL with the given index and returns whether it was accepted."""


class AppriseAlerter:
    """The Alerter of a node: a bounded queue, one sender thread, Apprise delivery.

    Construct with `from_config`. Long-running processes keep one alerter, and a CLI command calls
    `flush(timeout)` before it exits so that its alerts leave the node. With no URLs configured,
    alerts are still rate-limited and written to the log.
    """

    def __init__(
        self,
        cluster: str,
        node: str,
        urls: Sequence[SecretStr],
        state_dir: Path,
        *,
        repeat_interval: float = 600.0,
        timeout: float = 5.0,
        queue_size: int = 256,
        retry_delays: Sequence[float] = (15.0, 120.0),
        clock: Callable[[], float] = time.time,
        deliver: Deliver | None = None,
    ) -> None:
        self.cluster = cluster
        self.node = node
        self.repeat_interval = repeat_interval
        self.timeout = timeout
        self.retry_delays = tuple(retry_delays)
        self._clock = clock
        self._store = AlertStateStore(state_dir)
        self._queue: queue.Queue[_Queued | None] = queue.Queue(maxsize=queue_size)
        self._pending = 0
        self._idle = threading.Condition()
        self._retries: list[_Retry] = []
        self._next_digest: float | None = None
        self._dropped_unsaved = 0
        self._stopping = False

        secret_urls = [url.get_secret_value() for url in urls]
        _protect_library_logs(secret_urls)
        self._schemes = [urlsplit(url).scheme or "?" for url in secret_urls]
        self._url_count = len(secret_urls)
        if deliver is None and secret_urls:
            deliver = _AppriseDelivery(secret_urls, timeout).deliver
        self._deliver: Deliver = deliver if deliver is not None else _no_delivery

        self._thread = threading.Thread(target=self._run, name="mailcow-ha-alerts", daemon=True)
        self._thread.start()

    @classmethod
    def from_config(cls, config: NodeConfig, **overrides: Any) -> AppriseAlerter:
        """Build the alerter of this node from its config."""
        settings = config.alerts
        return cls(
            config.cluster,
            config.node.name,
            settings.urls,
            config.paths.state_dir,
            repeat_interval=settings.repeat_interval,
            timeout=settings.timeout,
            **overrides,
        )

    def send(self, event: AlertEvent, reason: str, details: dict[str, str] | None = None) -> None:
        """Queue one alert and return at once, without raising.

        A full queue drops the alert with a log line and counts it in the `dropped` counter.
        """
        try:
            item = _Queued(str(event), reason, dict(details or {}), self._clock())
            with self._idle:
                if self._stopping:
                    log.warning("alert %s not sent because the alerter is stopped: %s", event, reason)
                    return
                self._pending += 1
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                with self._idle:
                    self._pending -= 1
                    self._dropped_unsaved += 1
                    self._idle.notify_all()
                log.error(
                    "alert %s dropped because %d alerts are already queued: %s", event, self._queue.maxsize, reason
                )
        except Exception:
            log.exception("alert %s could not be queued", event)

    def flush(self, timeout: float) -> bool:
        """Wait until every queued alert was handled (sent, suppressed or failed), at most `timeout` s.

        Returns False when alerts were still pending. Scheduled retries and digests are not
        waited for, because digests stay in the state file for the next alerter on this node.
        """
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.warning("%d alert(s) still pending after waiting %.1f s", self._pending, timeout)
                    return False
                self._idle.wait(remaining)
        return True

    def close(self, timeout: float = 5.0) -> bool:
        """Flush, then stop the sender thread. Returns whether every queued alert was handled."""
        flushed = self.flush(timeout)
        with self._idle:
            self._stopping = True
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(timeout=max(0.1, timeout))
        return flushed

    # The sender thread.

    def _run(self) -> None:
        self._refresh_digest_schedule()
        while True:
            batch, stop = self._next_batch(self._wakeup_in())
            try:
                self._process(batch)
            except Exception:
                log.exception("alert sender failed on %d alert(s); they are lost", len(batch))
            finally:
                if batch:
                    with self._idle:
                        self._pending -= len(batch)
                        self._idle.notify_all()
            if stop:
                return

    def _next_batch(self, wait: float) -> tuple[list[_Queued], bool]:
        """Return every queued alert (waiting up to `wait` s for the first) and whether to stop."""
        batch: list[_Queued] = []
        try:
            item = self._queue.get(timeout=wait)
        except queue.Empty:
            return batch, False
        while item is not None:
            batch.append(item)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch, False
        return batch, True

    def _wakeup_in(self) -> float:
        due = [retry.due for retry in self._retries]
        if self._next_digest is not None:
            due.append(self._next_digest)
        if not due:
            return _WAKEUP_CAP
        return min(_WAKEUP_CAP, max(0.01, min(due) - self._clock()))

    def _refresh_digest_schedule(self) -> None:
        """Re-read the state file without locking, to see repeats other processes suppressed."""
        try:
            result = state.read_json(self._store.path, None, validate=valid_state)
        except Exception:
            log.exception("alert state %s could not be read", self._store.path)
            return
        if result.problem:
            self._queue_internal(AlertEvent.STATE_CORRUPT, result.problem)
        if result.value is not None:
            self._update_next_digest(decode_state(result.value))

    def _update_next_digest(self, alert_state: AlertState) -> None:
        due = [entry.last_sent + self.repeat_interval for entry in alert_state.entries.values() if entry.suppressed]
        self._next_digest = min(due) if due else None

    def _note_state_problem(self) -> None:
        problem, self._store.problem = self._store.problem, None
        if problem:
            self._queue_internal(AlertEvent.STATE_CORRUPT, problem)

    def _queue_internal(self, event: AlertEvent, reason: str) -> None:
        item = _Queued(str(event), reason, {SUBJECT_DETAIL: ALERTS_STATE_FILE}, self._clock())
        with self._idle:
            self._pending += 1
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()
            log.error("alert %s dropped because the queue is full: %s", event, reason)

    def _process(self, batch: list[_Queued]) -> None:
        now = self._clock()
        digest_due_now = self._next_digest is not None and self._next_digest <= now
        outgoing: list[Message] = []
        if batch or digest_due_now or self._dropped_unsaved:
            try:
                outgoing = self._decide(batch, now)
            except Exception:
                # The rate limit must never swallow an alert: without it, the batch goes out as it is.
                log.exception("alert rate limit failed; sending %d alert(s) without it", len(batch))
                outgoing = [self._unlimited(item) for item in batch]
                # Without this, a digest that cannot be built would wake the thread again at once.
                self._next_digest = now + self.repeat_interval
        elif not self._retries:
            self._refresh_digest_schedule()

        # A URL that fails once in this pass is not tried again until the next one, so a receiver
        # that hangs costs one timeout per pass instead of one per message.
        failing: set[int] = set()
        everywhere = list(range(self._url_count))
        outcomes = [self._deliver_everywhere(message, everywhere, failing) for message in outgoing]
        outcomes += self._run_due_retries(now, failing)
        self._count_outcomes(outcomes)

    def _decide(self, batch: list[_Queued], now: float) -> list[Message]:
        """Apply the rate limit to a batch and collect due digests, all under the state lock."""
        outgoing: list[Message] = []
        with self._store.locked() as alert_state:
            self._note_state_problem()
            with self._idle:
                alert_state.counters.dropped += self._dropped_unsaved
                self._dropped_unsaved = 0
            for item in batch:
                message = self._rate_limit(alert_state, item)
                if message is not None:
                    outgoing.append(message)
            outgoing += self._take_due_digests(alert_state, now)
            expired = [
                key for key, entry in alert_state.entries.items() if entry_expired(entry, now, self.repeat_interval)
            ]
            for key in expired:
                del alert_state.entries[key]
            self._update_next_digest(alert_state)
        return outgoing

    def _rate_limit(self, alert_state: AlertState, item: _Queued) -> Message | None:
        key = rate_key(item.event, item.details)
        decision = decide_rate(alert_state.entries.get(key), item.event, item.reason, item.at, self.repeat_interval)
        alert_state.entries[key] = decision.entry
        if decision.action is RateAction.SUPPRESS:
            alert_state.counters.suppressed += 1
            level = logging.INFO if decision.entry.suppressed == 1 else logging.DEBUG
            log.log(level, "alert %s suppressed (%s): %s", key, decision.reason, item.reason)
            return None
        log.info("alert %s: %s", key, item.reason)
        return format_alert(
            self.cluster,
            self.node,
            item.event,
            item.reason,
            details=item.details,
            now=item.at,
            suppressed=decision.suppressed_before,
            suppressed_since=decision.suppressed_since,
        )

    def _unlimited(self, item: _Queued) -> Message:
        return format_alert(self.cluster, self.node, item.event, item.reason, details=item.details, now=item.at)

    def _take_due_digests(self, alert_state: AlertState, now: float) -> list[Message]:
        digests = []
        for key, entry in alert_state.entries.items():
            if digest_due(entry, now, self.repeat_interval):
                digests.append(
                    format_digest(self.cluster, self.node, key, entry, interval=self.repeat_interval, now=now)
                )
                log.info("alert %s: %d repeat(s) suppressed in the last interval", key, entry.suppressed)
                alert_state.entries[key] = RateEntry(entry.event, now, last_reason=entry.last_reason)
        return digests

    def _deliver_everywhere(
        self, message: Message, url_indexes: list[int], failing: set[int], attempt: int = 1
    ) -> tuple[int, int]:
        """Deliver to each URL that has not failed in this pass; the others count as failed attempts."""
        failed_urls = []
        for index in url_indexes:
            if index in failing:
                failed_urls.append(index)
                continue
            try:
                accepted = self._deliver(index, message)
            except Exception as error:
                # The exception text may contain the URL, so only its type is logged.
                log.error("alert URL #%d (%s://) raised %s", index + 1, self._schemes[index], type(error).__name__)
                accepted = False
            if not accepted:
                failed_urls.append(index)
                failing.add(index)
        if failed_urls:
            self._schedule_retry(message, failed_urls, attempt)
        return len(url_indexes) - len(failed_urls), len(failed_urls)

    def _schedule_retry(self, message: Message, failed_urls: list[int], attempt: int) -> None:
        schemes = ", ".join(f"#{index + 1} ({self._schemes[index]}://)" for index in failed_urls)
        if attempt > len(self.retry_delays):
            log.error("alert %s not delivered to URL %s after %d attempt(s); giving up", message.key, schemes, attempt)
            return
        delay = self.retry_delays[attempt - 1]
        log.warning("alert %s not delivered to URL %s; retrying in %.1f s", message.key, schemes, delay)
        self._retries.append(_Retry(message, self._clock() + delay, attempt + 1, failed_urls))

    def _run_due_retries(self, now: float, failing: set[int]) -> list[tuple[int, int]]:
        due = [retry for retry in self._retries if retry.due <= now]
        self._retries = [retry for retry in self._retries if retry.due > now]
        return [self._deliver_everywhere(retry.message, retry.urls, failing, retry.attempt) for retry in due]

    def _count_outcomes(self, outcomes: list[tuple[int, int]]) -> None:
        sent = sum(accepted for accepted, _ in outcomes)
        failed = sum(rejected for _, rejected in outcomes)
        if not sent and not failed:
            return
        with self._store.locked() as alert_state:
            alert_state.counters.sent += sent
            alert_state.counters.failed += failed


def _no_delivery(index: int, message: Message) -> bool:
    """Stand in for Apprise when no URL is configured; never called because there is no URL index."""
    return False


class _AppriseDelivery:
    """One Apprise object per URL, so failures are counted per URL and named by index."""

    def __init__(self, urls: Sequence[str], timeout: float) -> None:
        import apprise  # noqa: PLC0415 (a 0.3 s import that commands without alert URLs skip)

        self._targets: list[Any] = []
        for index, url in enumerate(urls):
            asset = apprise.AppriseAsset(secure_logging=True, service_timeout=timeout * 2)
            plugin = apprise.Apprise.instantiate(url, asset=asset, suppress_exceptions=True)
            if plugin is None:
                scheme = urlsplit(url).scheme or "?"
                log.error(
                    "alert URL #%d (%s://) is not a valid Apprise URL; alerts will not go there", index + 1, scheme
                )
                self._targets.append(None)
                continue
            plugin.socket_connect_timeout = min(plugin.socket_connect_timeout, timeout)
            plugin.socket_read_timeout = min(plugin.socket_read_timeout, timeout)
            plugin.retry = 0
            target = apprise.Apprise(asset=asset)
            target.add(plugin)
            self._targets.append(target)
        self._timeout = timeout

    def deliver(self, index: int, message: Message) -> bool:
        target = self._targets[index]
        if target is None:
            return False
        return bool(
            target.notify(
                body=message.body, title=message.title, notify_type=message.notify_type, timeout=self._timeout * 2
            )
        )
