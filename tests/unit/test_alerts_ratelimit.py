"""The alert rate limit's decisions, its state file, and the message text."""

from __future__ import annotations

import json

import pytest

from mailcow_ha.alert_events import AlertEvent
from mailcow_ha.alert_format import format_alert, format_digest, notify_type
from mailcow_ha.alert_ratelimit import (
    ALERTS_STATE_FILE,
    AlertStateStore,
    RateAction,
    RateEntry,
    decide_rate,
    digest_due,
    entry_expired,
    rate_key,
    read_alert_counters,
)
from mailcow_ha.errors import StateError

INTERVAL = 600.0


def test_first_alert_is_sent():
    decision = decide_rate(None, "drift", "volume on node-b", now=1000.0, interval=INTERVAL)

    assert decision.action is RateAction.SEND
    assert decision.entry.last_sent == 1000.0
    assert decision.suppressed_before == 0
    assert decision.reason == "first alert of this kind"


def test_repeat_inside_interval_is_suppressed():
    entry = RateEntry("drift", last_sent=1000.0)

    first = decide_rate(entry, "drift", "again", now=1010.0, interval=INTERVAL)
    second = decide_rate(first.entry, "drift", "and again", now=1020.0, interval=INTERVAL)

    assert first.action is RateAction.SUPPRESS
    assert second.action is RateAction.SUPPRESS
    assert second.entry.suppressed == 2
    assert second.entry.first_suppressed == 1010.0
    assert second.entry.last_reason == "and again"
    assert second.entry.last_sent == 1000.0
    assert "repeat within 600 s" in second.reason


def test_alert_after_interval_reports_suppressed():
    entry = RateEntry("drift", last_sent=1000.0, suppressed=7, first_suppressed=1100.0, last_reason="x")

    decision = decide_rate(entry, "drift", "later", now=1000.0 + INTERVAL, interval=INTERVAL)

    assert decision.action is RateAction.SEND
    assert decision.suppressed_before == 7
    assert decision.suppressed_since == 1100.0
    assert decision.entry.suppressed == 0
    assert decision.entry.last_sent == 1600.0


def test_clock_backwards_sends_again():
    entry = RateEntry("drift", last_sent=5000.0)

    decision = decide_rate(entry, "drift", "after a clock step", now=4000.0, interval=INTERVAL)

    assert decision.action is RateAction.SEND
    assert decision.reason == "clock moved backwards since the last alert"


@pytest.mark.parametrize(
    ("entry", "now", "due"),
    [
        (RateEntry("drift", 1000.0, suppressed=0), 5000.0, False),
        (RateEntry("drift", 1000.0, suppressed=3), 1599.0, False),
        (RateEntry("drift", 1000.0, suppressed=3), 1600.0, True),
        (RateEntry("drift", 1000.0, suppressed=3), 900.0, True),
    ],
)
def test_digest_due_cases(entry, now, due):
    assert digest_due(entry, now, INTERVAL) is due


def test_entry_expiry_keeps_pending_digests():
    old = 10 * 86400.0
    assert entry_expired(RateEntry("drift", 0.0), old, INTERVAL)
    assert not entry_expired(RateEntry("drift", 0.0, suppressed=1), old, INTERVAL)
    assert not entry_expired(RateEntry("drift", old - 60), old, INTERVAL)


def test_rate_key_separates_subjects():
    assert rate_key(AlertEvent.DRIFT, None) == "drift"
    assert rate_key(AlertEvent.DRIFT, {"subject": "floating-ip 201"}) == "drift|floating-ip 201"
    assert rate_key(AlertEvent.DRIFT, {"step": "assign"}) == "drift"


def test_alert_message_names_cluster_node_reason():
    message = format_alert(
        "prod",
        "node-b",
        "failover-failed",
        "volume attach timed out",
        details={"step": "move-volume", "volume": "301"},
        now=0.0,
        suppressed=4,
        suppressed_since=60.0,
    )

    assert message.title == "mailcow-ha prod: failover-failed on node-b"
    assert message.body.startswith("volume attach timed out\n")
    assert "cluster: prod" in message.body
    assert "node: node-b" in message.body
    assert "step: move-volume" in message.body
    assert "time: 1970-01-01T00:00:00Z" in message.body
    assert "4 earlier alert(s) of this kind were suppressed since 1970-01-01T00:01:00Z." in message.body
    assert message.notify_type == "failure"


def test_digest_message_reports_count():
    entry = RateEntry("drift", 0.0, suppressed=99, first_suppressed=1.0, last_reason="volume on node-c")

    message = format_digest("prod", "node-a", "drift|volume 301", entry, interval=600.0, now=600.0)

    assert "repeated" in message.title
    assert message.body.startswith("99 more alert(s) of this kind were suppressed")
    assert "Latest reason: volume on node-c" in message.body
    assert "subject: volume 301" in message.body
    assert "node: node-a" in message.body


def test_notify_types_per_event():
    assert notify_type("failover-succeeded") == "success"
    assert notify_type("failover-failed") == "failure"
    assert notify_type("drift") == "warning"
    assert notify_type("some-future-event") == "warning"


def test_store_round_trip(tmp_path):
    store = AlertStateStore(tmp_path)

    with store.locked() as alert_state:
        alert_state.entries["drift"] = RateEntry("drift", 10.0, suppressed=2, first_suppressed=11.0, last_reason="r")
        alert_state.counters.sent = 3

    with store.locked() as alert_state:
        assert alert_state.entries["drift"] == RateEntry("drift", 10.0, 2, 11.0, "r")
        assert alert_state.counters.sent == 3
    assert read_alert_counters(tmp_path).sent == 3
    assert (tmp_path / ALERTS_STATE_FILE).stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    "content",
    [b"{not json", b'{"version": 1, "entries": [], "counters": {}}', b'{"version": 99, "entries": {}, "counters": {}}'],
)
def test_store_corrupt_file_moved_aside(tmp_path, content):
    (tmp_path / ALERTS_STATE_FILE).write_bytes(content)
    store = AlertStateStore(tmp_path)

    with store.locked() as alert_state:
        assert alert_state.entries == {}

    assert store.problem is not None
    assert "moved to" in store.problem
    assert list(tmp_path.glob(f"{ALERTS_STATE_FILE}.corrupt-*"))
    written = json.loads((tmp_path / ALERTS_STATE_FILE).read_text())
    assert written["version"] == 1


def test_counters_of_missing_file_are_zero(tmp_path):
    counters = read_alert_counters(tmp_path)

    assert counters.as_dict() == {"sent": 0, "failed": 0, "suppressed": 0, "dropped": 0}


def test_store_write_failure_raises_state_error(tmp_path):
    store = AlertStateStore(tmp_path / "missing-parent" / "x")
    (tmp_path / "missing-parent").write_text("a file, not a directory")

    with pytest.raises((StateError, OSError)), store.locked():
        pass


GOOD_ENTRY = {"event": "drift", "last_sent": 10.0, "suppressed": 2, "first_suppressed": 11.0, "last_reason": "r"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("first_suppressed", "yesterday"),
        ("first_suppressed", 1e300),
        ("last_sent", float("nan")),
        ("last_sent", -5),
        ("last_sent", True),
        ("suppressed", -1),
        ("suppressed", 2.5),
        ("last_reason", 42),
    ],
)
def test_damaged_entry_moved_aside(tmp_path, field, value):
    document = {"version": 1, "entries": {"drift": {**GOOD_ENTRY, field: value}}, "counters": {}}
    (tmp_path / ALERTS_STATE_FILE).write_text(json.dumps(document))
    store = AlertStateStore(tmp_path)

    with store.locked() as alert_state:
        assert alert_state.entries == {}

    assert store.problem is not None
    assert "unexpected shape" in store.problem


def test_negative_counter_moved_aside(tmp_path):
    document = {"version": 1, "entries": {"drift": GOOD_ENTRY}, "counters": {"sent": -3}}
    (tmp_path / ALERTS_STATE_FILE).write_text(json.dumps(document))
    store = AlertStateStore(tmp_path)

    with store.locked() as alert_state:
        assert alert_state.counters.sent == 0

    assert store.problem is not None
