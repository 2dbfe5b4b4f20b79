"""Alerts delivered by Apprise to a real HTTP receiver on loopback (json:// and form:// schemes)."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from harness.alertreceiver import AlertReceiver
from mailcow_ha.adapters.alerts import AppriseAlerter
from mailcow_ha.alert_events import AlertEvent
from mailcow_ha.alert_ratelimit import ALERTS_STATE_FILE, AlertCounters, read_alert_counters

pytestmark = pytest.mark.integration


@pytest.fixture
def receiver():
    with AlertReceiver() as running:
        yield running


def wait_for_counters(
    state_dir: Path, condition: Callable[[AlertCounters], bool], timeout: float = 5.0
) -> AlertCounters:
    """Poll the alert counters, which the sender writes after the receiver responded."""
    deadline = time.monotonic() + timeout
    counters = read_alert_counters(state_dir)
    while not condition(counters) and time.monotonic() < deadline:
        time.sleep(0.02)
        counters = read_alert_counters(state_dir)
    return counters


def alerter_for(tmp_path: Path, urls: list[str], **kwargs: Any) -> AppriseAlerter:
    kwargs.setdefault("timeout", 1.0)
    return AppriseAlerter("prod", "node-b", [SecretStr(url) for url in urls], tmp_path, **kwargs)


def test_flood_gives_one_message_and_count(tmp_path, receiver):
    alerter = alerter_for(tmp_path, [receiver.json_url("hooks/flood")], repeat_interval=1.0)

    for number in range(100):
        alerter.send(AlertEvent.FAILOVER_FAILED, f"attach of volume 301 failed (attempt {number})")
    assert alerter.flush(5)

    first = receiver.wait_for(1, timeout=5)
    assert len(first) == 1
    assert first[0].title == "mailcow-ha prod: failover-failed on node-b"
    assert first[0].payload["type"] == "failure"
    assert "attempt 0" in first[0].message

    both = receiver.wait_for(2, timeout=5)
    assert len(both) == 2
    assert both[1].message.startswith("99 more alert(s) of this kind were suppressed")
    assert "Latest reason: attach of volume 301 failed (attempt 99)" in both[1].message
    time.sleep(1.2)
    assert len(receiver.received) == 2
    alerter.close()


def test_every_message_names_cluster_node_reason(tmp_path, receiver):
    alerter = alerter_for(tmp_path, [receiver.json_url()])

    alerter.send(AlertEvent.FAILOVER_SUCCEEDED, "node-b is MASTER", {"total": "4.2 s", "move-volume": "2.1 s"})
    assert alerter.flush(5)

    [alert] = receiver.wait_for(1, timeout=5)
    assert alert.payload["type"] == "success"
    assert "cluster: prod" in alert.message
    assert "node: node-b" in alert.message
    assert alert.message.startswith("node-b is MASTER")
    assert "move-volume: 2.1 s" in alert.message
    alerter.close()


def test_form_scheme_delivers(tmp_path, receiver):
    alerter = alerter_for(tmp_path, [receiver.form_url("form-hook")])

    alerter.send(AlertEvent.GC_REPAIRED, "unmounted the shared volume on a standby")
    assert alerter.flush(5)

    [alert] = receiver.wait_for(1, timeout=5)
    assert alert.path == "/form-hook"
    assert alert.title == "mailcow-ha prod: gc-repaired on node-b"
    assert "unmounted the shared volume" in alert.message
    alerter.close()


def test_restarted_alerter_does_not_reflood(tmp_path, receiver):
    url = receiver.json_url()
    first = alerter_for(tmp_path, [url])
    first.send(AlertEvent.QUORUM_LOST, "wsrep_cluster_status is non-Primary")
    assert first.flush(5)
    first.close()

    second = alerter_for(tmp_path, [url])
    for _ in range(10):
        second.send(AlertEvent.QUORUM_LOST, "wsrep_cluster_status is non-Primary")
    assert second.flush(5)

    time.sleep(0.3)
    assert len(receiver.received) == 1
    assert read_alert_counters(tmp_path).suppressed == 10
    second.close()


def test_server_error_is_counted_and_retried(tmp_path, receiver):
    receiver.fail_next(1, status=503)
    alerter = alerter_for(tmp_path, [receiver.json_url()], retry_delays=(0.2,))

    alerter.send(AlertEvent.BREAKER_TRIPPED, "second failover within 3600 s")
    assert alerter.flush(5)

    delivered = receiver.wait_for(1, timeout=5)
    assert len(delivered) == 1
    assert receiver.requests == 2
    counters = wait_for_counters(tmp_path, lambda counters: counters.sent == 1)
    assert counters.failed == 1
    assert counters.sent == 1
    alerter.close()


def test_hung_receiver_bounded_by_timeout(tmp_path, receiver):
    receiver.set_delay(3.0)
    alerter = alerter_for(tmp_path, [receiver.json_url()], timeout=0.5, retry_delays=())

    started = time.monotonic()
    alerter.send(AlertEvent.FAILOVER_STARTED, "node-b became MASTER")
    send_time = time.monotonic() - started
    flushed = alerter.flush(5)
    flush_time = time.monotonic() - started

    assert send_time < 0.1
    assert flushed
    assert flush_time < 2.5
    assert read_alert_counters(tmp_path).failed == 1
    alerter.close()


def test_closed_port_fails_fast(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    alerter = alerter_for(tmp_path, [f"json://127.0.0.1:{port}/nobody"], retry_delays=())

    alerter.send(AlertEvent.DEMOTE_FAILED, "unmount failed: target is busy")

    assert alerter.flush(5)
    assert read_alert_counters(tmp_path).failed == 1
    alerter.close()


def test_urls_never_reach_logs(tmp_path, receiver, caplog):
    secret_path = "hooks/T0KEN-abcdef123456"
    url = f"json://operator:pa55-w0rd-xyz@127.0.0.1:{receiver.port}/{secret_path}"
    receiver.fail_next(1, status=500)

    with caplog.at_level(logging.DEBUG):
        logging.getLogger("urllib3").setLevel(logging.DEBUG)
        alerter = alerter_for(tmp_path, [url, "json://127.0.0.1:1/T0KEN-other-999"], retry_delays=(0.1,))
        alerter.send(AlertEvent.FAILOVER_FAILED, "assign of floating IP 201 failed")
        assert alerter.flush(5)
        receiver.wait_for(1, timeout=5)
        time.sleep(0.3)
        alerter.close()

    assert caplog.records
    assert "T0KEN-abcdef123456" not in caplog.text
    assert "pa55-w0rd-xyz" not in caplog.text
    assert "T0KEN-other-999" not in caplog.text
    assert "URL #1 (json://)" in caplog.text


def test_invalid_url_is_reported_by_index(tmp_path, receiver, caplog):
    with caplog.at_level(logging.ERROR, logger="mailcow_ha"):
        alerter = alerter_for(tmp_path, ["nosuchscheme://secret-value-77", receiver.json_url()])
        alerter.send(AlertEvent.DRIFT, "volume held by node-c")
        assert alerter.flush(5)
        alerter.close()

    assert "alert URL #1 (nosuchscheme://) is not a valid Apprise URL" in caplog.text
    assert "secret-value-77" not in caplog.text
    assert len(receiver.wait_for(1, timeout=5)) == 1


def test_hung_receiver_costs_one_timeout_per_pass(tmp_path, receiver):
    receiver.set_delay(30.0)
    alerter = alerter_for(tmp_path, [receiver.json_url()], timeout=0.5, retry_delays=(1.0,))
    started = time.monotonic()

    for number in range(20):
        alerter.send(AlertEvent.DRIFT, f"floating IP {200 + number} routed elsewhere", {"subject": f"fip {number}"})
    flushed = alerter.flush(5)
    flush_time = time.monotonic() - started
    receiver.set_delay(0.0)
    delivered = receiver.wait_for(20, timeout=10)

    assert flushed
    assert flush_time < 3.0
    assert len({alert.title for alert in delivered}) == 1
    assert len({alert.message.partition("\n")[0] for alert in delivered}) == 20
    alerter.close()


def test_encoded_url_secrets_never_reach_logs(tmp_path, receiver, caplog):
    url = f"json://127.0.0.1:{receiver.port}/hooks/A%2FB%2BPathSecret77?-token=Query%2BSecret%2688"
    receiver.fail_next(1, status=500)

    with caplog.at_level(logging.DEBUG):
        logging.getLogger("urllib3").setLevel(logging.DEBUG)
        alerter = alerter_for(tmp_path, [url], retry_delays=(0.1,))
        alerter.send(AlertEvent.FAILOVER_FAILED, "assign of floating IP 201 failed")
        assert alerter.flush(5)
        receiver.wait_for(1, timeout=5)
        time.sleep(0.3)
        alerter.close()

    assert "POST" in caplog.text
    assert "PathSecret77" not in caplog.text
    assert "Secret%2688" not in caplog.text
    assert "Query" not in caplog.text


def test_damaged_rate_limit_state_does_not_silence(tmp_path, receiver):
    entry = {"event": "drift", "last_sent": time.time() - 5000, "suppressed": 3, "first_suppressed": "yesterday"}
    document = {"version": 1, "entries": {"drift": entry}, "counters": {"sent": 4}}
    (tmp_path / ALERTS_STATE_FILE).write_text(json.dumps(document))
    alerter = alerter_for(tmp_path, [receiver.json_url()])

    alerter.send(AlertEvent.QUORUM_LOST, "galera: non-Primary on every node")

    titles = sorted(alert.title for alert in receiver.wait_for(2, timeout=5))
    assert titles == ["mailcow-ha prod: quorum-lost on node-b", "mailcow-ha prod: state-corrupt on node-b"]
    alerter.close()
