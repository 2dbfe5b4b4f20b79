"""The Hetzner adapter's pure decisions: retries, backoff and the steps of a move."""

import pytest

from mailcow_ha.adapters.hetzner_policy import (
    RetryPolicy,
    VolumeStep,
    backoff,
    decide_retry,
    decide_volume_step,
    floating_ips_to_assign,
    is_retryable,
    is_transient,
    rate_limit_wait,
)

POLICY = RetryPolicy(initial_backoff=0.25, max_backoff=4.0, rate_limit_margin=0.05)


@pytest.mark.parametrize(
    "code",
    ["locked", "conflict", "server_error", "service_error", "unavailable", "maintenance", "timeout", "bad_gateway"],
)
def test_api_codes_transient(code):
    assert is_transient(code)


@pytest.mark.parametrize("code", ["request_timeout", "connection_error", "http_500", "http_502", "http_504"])
def test_transport_failures_transient(code):
    assert is_transient(code)


@pytest.mark.parametrize(
    "code", ["invalid_input", "not_found", "unauthorized", "forbidden", "volume_already_attached", "http_404"]
)
def test_client_errors_not_transient(code):
    assert not is_transient(code)


def test_backoff_doubles_then_caps():
    waits = [backoff(attempt, POLICY) for attempt in range(7)]

    assert waits == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_transient_error_retried_inside_deadline():
    decision = decide_retry("locked", 1, 10.0, POLICY)

    assert decision.retry
    assert decision.delay == 0.5
    assert "locked is transient" in decision.reason


def test_transient_error_gives_up_at_deadline():
    decision = decide_retry("locked", 3, 1.5, POLICY)

    assert not decision.retry
    assert decision.out_of_time
    assert decision.delay == 0.0
    assert "would pass the step's deadline" in decision.reason


def test_permanent_error_fails_at_once():
    decision = decide_retry("invalid_input", 0, 60.0, POLICY)

    assert not decision.retry
    assert not decision.out_of_time
    assert decision.reason == "error code invalid_input is not retryable"


def test_rate_limit_waits_for_reset():
    decision = decide_retry("rate_limit_exceeded", 0, 10.0, POLICY, rate_limit_reset_in=2.0)

    assert decision.retry
    assert decision.delay == pytest.approx(2.05)
    assert "next refill" in decision.reason


def test_rate_limit_past_deadline_fails_at_once():
    decision = decide_retry("rate_limit_exceeded", 0, 1.0, POLICY, rate_limit_reset_in=2.0)

    assert not decision.retry
    assert decision.out_of_time
    assert "past the step's deadline" in decision.reason


def test_rate_limit_reset_in_past_retries_soon():
    decision = decide_retry("rate_limit_exceeded", 0, 5.0, POLICY, rate_limit_reset_in=-3.0)

    assert decision.retry
    assert decision.delay == pytest.approx(0.05)


def test_rate_limit_without_header_backs_off():
    decision = decide_retry("rate_limit_exceeded", 2, 5.0, POLICY)

    assert decision.retry
    assert decision.delay == 1.0
    assert "no rate limit headers" in decision.reason


@pytest.mark.parametrize(
    ("attached_to", "expected"),
    [(7, VolumeStep.DONE), (None, VolumeStep.ATTACH), (3, VolumeStep.DETACH)],
)
def test_volume_step(attached_to, expected):
    step, reason = decide_volume_step(42, attached_to, 7)

    assert step is expected
    assert "volume 42" in reason


def test_volume_step_reason_names_holder():
    _, reason = decide_volume_step(42, 3, 7)

    assert reason == "volume 42 is attached to server 3; detaching it before attaching it to 7"


def test_floating_ips_already_here():
    pending, reason = floating_ips_to_assign({10: 7, 11: 7}, 7)

    assert pending == []
    assert reason == "every floating IP is assigned to this server 7"


def test_floating_ips_pending_sorted():
    pending, reason = floating_ips_to_assign({11: None, 10: 3, 12: 7}, 7)

    assert pending == [10, 11]
    assert reason == "assigning floating IPs to server 7: 10 (now on 3), 11 (now on no server)"


def test_rate_limit_retryable_not_transient():
    assert is_retryable("rate_limit_exceeded")
    assert not is_transient("rate_limit_exceeded")
    assert not is_retryable("invalid_input")


@pytest.mark.parametrize(
    ("limit", "reset_in", "expected"),
    [
        ("3600", 1800.0, 1.0),  # budget full in 30 min, but one request a second refills
        ("3600", 0.4, 0.4),  # the reset comes before the next refill
        ("36000", 50.0, 0.1),
        ("3600", -2.0, 0.0),
        (None, 2.5, 2.5),
        ("3600", None, 1.0),
        ("not-a-number", 3.0, 3.0),
    ],
)
def test_rate_limit_wait(limit, reset_in, expected):
    assert rate_limit_wait(limit, reset_in) == pytest.approx(expected)


def test_rate_limit_wait_without_headers():
    assert rate_limit_wait(None, None) is None
