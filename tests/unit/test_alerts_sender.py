"""The Apprise alerter's queue, sender thread and log masking, with delivery replaced by a recorder."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from harness.nodeconfig import deep_update, node_config_dict
from mailcow_ha.adapters.alerts import AppriseAlerter, Deliver, mask_text, secret_fragments
from mailcow_ha.alert_events import AlertEvent
from mailcow_ha.alert_format import Message
from mailcow_ha.alert_ratelimit import ALERTS_STATE_FILE, read_alert_counters
from mailcow_ha.config import parse_config

URL = "json://alice:hunter2-password@hooks.example.net:8443/api/webhook-token-123?key=query-secret"


class Recorder:
    """A delivery function that records messages and can fail or block on request."""

    def __init__(self, accept: bool = True) -> None:
        self.messages: list[tuple[int, Message]] = []
        self.accept = accept
        self.release = threading.Event()
        self.release.set()
        self.lock = threading.Lock()

    def __call__(self, index: int, message: Message) -> bool:
        self.release.wait(10)
        with self.lock:
            self.messages.append((index, message))
        return self.accept

    def titles(self) -> list[str]:
        with self.lock:
            return [message.title for _, message in self.messages]


def make_alerter(tmp_path: Path, recorder: Deliver, *, urls: Sequence[str] = (URL,), **kwargs: Any) -> AppriseAlerter:
    return AppriseAlerter("prod", "node-a", [SecretStr(url) for url in urls], tmp_path, deliver=recorder, **kwargs)


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_flood_sends_one_message(tmp_path):
    recorder = Recorder()
    alerter = make_alerter(tmp_path, recorder)

    for number in range(100):
        alerter.send(AlertEvent.QUORUM_LOST, f"non-Primary, attempt {number}")

    assert alerter.flush(5)
    assert recorder.titles() == ["mailcow-ha prod: quorum-lost on node-a"]
    counters = read_alert_counters(tmp_path)
    assert counters.sent == 1
    assert counters.suppressed == 99
    alerter.close()


def test_send_never_blocks_on_slow_delivery(tmp_path):
    recorder = Recorder()
    recorder.release.clear()
    alerter = make_alerter(tmp_path, recorder)

    started = time.monotonic()
    alerter.send(AlertEvent.FAILOVER_STARTED, "node-a became MASTER")
    elapsed = time.monotonic() - started

    assert elapsed < 0.5
    assert not alerter.flush(0.2)
    recorder.release.set()
    assert alerter.flush(5)
    alerter.close()


def test_full_queue_drops_and_counts(tmp_path):
    recorder = Recorder()
    recorder.release.clear()
    alerter = make_alerter(tmp_path, recorder, queue_size=2)
    alerter.send(AlertEvent.DRIFT, "first", {"subject": "a"})
    assert wait_until(alerter._queue.empty)

    for subject in "bcdef":
        alerter.send(AlertEvent.DRIFT, "more", {"subject": subject})
    recorder.release.set()

    assert alerter.flush(5)
    alerter.send(AlertEvent.DRIFT, "after the flood", {"subject": "z"})
    assert alerter.flush(5)
    assert read_alert_counters(tmp_path).dropped == 3
    alerter.close()


def test_restart_does_not_resend(tmp_path):
    first = Recorder()
    alerter = make_alerter(tmp_path, first)
    alerter.send(AlertEvent.BREAKER_TRIPPED, "second failover inside the window")
    assert alerter.flush(5)
    alerter.close()

    second = Recorder()
    restarted = make_alerter(tmp_path, second)
    restarted.send(AlertEvent.BREAKER_TRIPPED, "second failover inside the window")
    assert restarted.flush(5)

    assert len(first.messages) == 1
    assert second.messages == []
    assert read_alert_counters(tmp_path).suppressed == 1
    restarted.close()


def test_digest_after_interval(tmp_path):
    recorder = Recorder()
    alerter = make_alerter(tmp_path, recorder, repeat_interval=0.3)

    for _ in range(5):
        alerter.send(AlertEvent.DRIFT, "volume attached to node-c")
    assert alerter.flush(5)
    assert wait_until(lambda: len(recorder.messages) == 2)

    digest = recorder.messages[1][1]
    assert "repeated" in digest.title
    assert digest.body.startswith("4 more alert(s) of this kind were suppressed")
    alerter.close()


def test_digest_sent_by_next_process(tmp_path):
    """Repeats suppressed by a short-lived command are reported by the next alerter on the node."""
    command = make_alerter(tmp_path, Recorder(), repeat_interval=0.3)
    command.send(AlertEvent.DRIFT, "floating IP on node-c")
    command.send(AlertEvent.DRIFT, "floating IP on node-c")
    assert command.flush(5)
    command.close(timeout=0.5)

    time.sleep(0.35)
    recorder = Recorder()
    agent = make_alerter(tmp_path, recorder, repeat_interval=0.3)

    assert wait_until(lambda: len(recorder.messages) == 1)
    assert recorder.messages[0][1].body.startswith("1 more alert(s)")
    agent.close()


def test_subjects_are_limited_separately(tmp_path):
    recorder = Recorder()
    alerter = make_alerter(tmp_path, recorder)

    alerter.send(AlertEvent.DRIFT, "floating IP elsewhere", {"subject": "floating-ip 201"})
    alerter.send(AlertEvent.DRIFT, "volume elsewhere", {"subject": "volume 301"})
    alerter.send(AlertEvent.DRIFT, "floating IP elsewhere", {"subject": "floating-ip 201"})

    assert alerter.flush(5)
    assert len(recorder.messages) == 2
    alerter.close()


def test_failed_delivery_is_retried(tmp_path):
    recorder = Recorder(accept=False)
    alerter = make_alerter(tmp_path, recorder, retry_delays=(0.1, 0.1))

    alerter.send(AlertEvent.FAILOVER_FAILED, "mount failed")
    assert alerter.flush(5)

    assert wait_until(lambda: len(recorder.messages) == 3)
    assert wait_until(lambda: read_alert_counters(tmp_path).failed == 3)
    time.sleep(0.3)
    assert len(recorder.messages) == 3
    alerter.close()


def test_retry_goes_only_to_failed_url(tmp_path):
    calls: list[int] = []

    def deliver(index, message):
        calls.append(index)
        return index == 0 or len(calls) > 2

    alerter = make_alerter(tmp_path, deliver, urls=(URL, "form://other.example.net/x"), retry_delays=(0.1,))
    alerter.send(AlertEvent.FAILOVER_FAILED, "mount failed")

    assert wait_until(lambda: len(calls) == 3)
    assert calls == [0, 1, 1]
    assert wait_until(lambda: read_alert_counters(tmp_path).sent == 2)
    counters = read_alert_counters(tmp_path)
    assert counters.sent == 2
    assert counters.failed == 1
    alerter.close()


def test_raising_delivery_is_contained(tmp_path, caplog):
    def deliver(index, message):
        raise RuntimeError(f"connection to {URL} refused")

    alerter = make_alerter(tmp_path, deliver, retry_delays=())
    with caplog.at_level(logging.DEBUG):
        alerter.send(AlertEvent.FAILOVER_FAILED, "volume attach failed")
        assert alerter.flush(5)

    assert read_alert_counters(tmp_path).failed == 1
    assert "alert URL #1 (json://) raised RuntimeError" in caplog.text
    assert "hunter2" not in caplog.text
    alerter.close()


def test_send_after_close_is_harmless(tmp_path):
    alerter = make_alerter(tmp_path, Recorder())
    assert alerter.close()

    alerter.send(AlertEvent.DRIFT, "late")

    assert alerter.flush(0.1)


def test_corrupt_state_alerts_and_continues(tmp_path):
    (tmp_path / ALERTS_STATE_FILE).write_text("{broken")
    recorder = Recorder()
    alerter = make_alerter(tmp_path, recorder)

    alerter.send(AlertEvent.DRIFT, "volume elsewhere")

    assert wait_until(lambda: len(recorder.messages) == 2)
    titles = recorder.titles()
    assert "mailcow-ha prod: state-corrupt on node-a" in titles
    assert "mailcow-ha prod: drift on node-a" in titles
    alerter.close()


def test_no_urls_still_logs(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="mailcow_ha"):
        alerter = AppriseAlerter("prod", "node-a", [], tmp_path)
        alerter.send(AlertEvent.MAINTENANCE_EXPIRED, "maintenance expired at 03:00 and is still on")
        assert alerter.flush(5)
        alerter.close()

    assert "alert maintenance-expired: maintenance expired at 03:00 and is still on" in caplog.text


def test_from_config_uses_settings(tmp_path):
    document = deep_update(node_config_dict(), "paths", {"state_dir": str(tmp_path)})
    document = deep_update(document, "alerts", {"urls": [URL], "repeat_interval": 42, "timeout": 1.5})
    config = parse_config(document)

    alerter = AppriseAlerter.from_config(config, deliver=Recorder())

    assert alerter.cluster == "mailcow-ha-test"
    assert alerter.node == "mailcow-ha-test-1"
    assert alerter.repeat_interval == 42
    assert alerter.timeout == 1.5
    alerter.close()


def test_secret_fragments_cover_every_part():
    fragments = secret_fragments(URL)

    for part in ("alice", "hunter2-password", "hooks.example.net", "webhook-token-123", "query-secret", URL):
        assert part in fragments
    assert "json" not in fragments
    assert "api" not in fragments


def test_bot_token_in_host_is_masked():
    url = "tgram://123456789:AAbbCCddEEff/987654"
    text = "Failed to reach tgram://123456789:AAbbCCddEEff/987654 (host 123456789:AAbbCCddEEff)"

    masked = mask_text(text, sorted(secret_fragments(url), key=len, reverse=True))

    assert "AAbbCCddEEff" not in masked
    assert "987654" not in masked


@pytest.mark.parametrize("logger_name", ["apprise", "urllib3.connectionpool"])
def test_library_records_are_masked(tmp_path, caplog, logger_name):
    alerter = make_alerter(tmp_path, Recorder())
    library = logging.getLogger(logger_name)

    with caplog.at_level(logging.WARNING):
        library.warning("POST %s failed", "https://hooks.example.net:8443/api/webhook-token-123")

    assert "webhook-token-123" not in caplog.text
    assert "hooks.example.net" not in caplog.text
    assert "POST https://***" in caplog.text
    alerter.close()


def test_apprise_debug_records_are_dropped(tmp_path):
    logging.getLogger("apprise").setLevel(logging.DEBUG)
    alerter = make_alerter(tmp_path, Recorder())

    assert logging.getLogger("apprise").getEffectiveLevel() == logging.WARNING
    alerter.close()


def test_damaged_entry_does_not_silence_alerts(tmp_path):
    entry = {"event": "drift", "last_sent": time.time() - 5000, "suppressed": 3, "first_suppressed": "yesterday"}
    document = {"version": 1, "entries": {"drift": entry}, "counters": {}}
    (tmp_path / ALERTS_STATE_FILE).write_text(json.dumps(document))
    recorder = Recorder()
    alerter = make_alerter(tmp_path, recorder)

    alerter.send(AlertEvent.FAILOVER_FAILED, "attach of volume 301 failed")
    assert wait_until(lambda: len(recorder.messages) == 2)
    alerter.send(AlertEvent.BREAKER_TRIPPED, "second failover within 3600 s")
    assert wait_until(lambda: len(recorder.messages) == 3)

    titles = recorder.titles()
    assert "mailcow-ha prod: failover-failed on node-a" in titles
    assert "mailcow-ha prod: state-corrupt on node-a" in titles
    assert titles[-1] == "mailcow-ha prod: breaker-tripped on node-a"
    alerter.close()


def test_failing_rate_limit_still_sends(tmp_path, monkeypatch, caplog):
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("a bug in the rate limit")

    monkeypatch.setattr("mailcow_ha.adapters.alerts.decide_rate", broken)
    recorder = Recorder()
    alerter = make_alerter(tmp_path, recorder)

    alerter.send(AlertEvent.QUORUM_LOST, "galera: non-Primary on every node")

    assert wait_until(lambda: len(recorder.messages) == 1)
    assert recorder.titles() == ["mailcow-ha prod: quorum-lost on node-a"]
    assert "sending 1 alert(s) without it" in caplog.text
    alerter.close()


def test_failing_digest_does_not_spin(tmp_path, monkeypatch, caplog):
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("a bug in the digest")

    monkeypatch.setattr("mailcow_ha.adapters.alerts.format_digest", broken)
    recorder = Recorder()
    alerter = make_alerter(tmp_path, recorder, repeat_interval=0.2)
    alerter.send(AlertEvent.DRIFT, "volume elsewhere")
    alerter.send(AlertEvent.DRIFT, "volume elsewhere")
    assert alerter.flush(5)

    time.sleep(1.0)

    failures = [record for record in caplog.records if "rate limit failed" in record.getMessage()]
    assert 1 <= len(failures) <= 6
    alerter.close()
