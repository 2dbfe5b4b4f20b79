"""Parts of the fake Hetzner Cloud API that need no server: label selectors, faults, the rate limit."""

from typing import Any

import pytest

from harness.fakecloud.faults import Fault, FaultBook
from harness.fakecloud.labels import compile_selector, split_expressions
from harness.fakecloud.ledger import EventLog, RateLimit, RequestLedger

LABELS = {"cluster": "c1", "role": "node", "tier": "a"}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("cluster=c1", True),
        ("cluster==c1", True),
        ("cluster=c2", False),
        ("cluster!=c2", True),
        ("cluster!=c1", False),
        ("role", True),
        ("missing", False),
        ("!missing", True),
        ("!role", False),
        ("tier in (a,b)", True),
        ("tier in (b, c)", False),
        ("tier notin (b,c)", True),
        ("tier notin (a)", False),
        ("missing notin (a)", True),
        ("cluster=c1,role=node", True),
        ("cluster=c1,role=db", False),
        ("cluster=c1,tier in (a,b),!missing", True),
    ],
)
def test_label_selector_matches(selector, expected):
    assert compile_selector(selector)(LABELS) is expected


@pytest.mark.parametrize("selector", ["cluster=c1,", "=c1", "tier in a,b", "tier in (a,b", "a b", "k=v=w", "x in (a))"])
def test_label_selector_rejects_invalid(selector):
    with pytest.raises(ValueError, match="label selector"):
        compile_selector(selector)


def test_label_selector_split_keeps_sets():
    assert split_expressions("a=1,b in (x,y),!c") == ["a=1", "b in (x,y)", "!c"]


def test_fault_needs_effect():
    with pytest.raises(ValueError, match="needs an effect"):
        Fault(operation="volume.attach")


def test_fault_rejects_two_effects():
    with pytest.raises(ValueError, match="one of"):
        Fault(code="locked", action="error")


def test_fault_unknown_code_needs_status():
    with pytest.raises(ValueError, match="unknown error code"):
        Fault(code="made_up")


def test_fault_status_and_code_defaults():
    assert Fault(code="locked").error_status() == 423
    assert Fault(status=409).error_code() == "conflict"
    assert Fault(status=502).error_code() is None


def test_fault_book_counts_and_skips():
    book = FaultBook()
    book.add(Fault(operation="volume.attach", code="locked", count=2, skip=1))

    matched = [book.take("volume.attach") for _ in range(4)]

    assert [fault is not None for fault in matched] == [False, True, True, False]
    assert book.list() == []


def test_fault_book_wildcards():
    book = FaultBook()
    book.add(Fault(operation="volume.*", status=500, count=None))

    assert book.take("volume.get") is not None
    assert book.take("volume.attach") is not None
    assert book.take("floating_ip.get") is None


def test_rate_limit_refills_one_per_second():
    now = [1000.0]
    limit = RateLimit(3600, clock=lambda: now[0])
    limit.configure(3600, remaining=1)

    first = limit.consume()
    second = limit.consume()
    now[0] += 1.0
    third = limit.consume()

    assert first.allowed
    assert not second.allowed
    assert second.remaining == 0
    assert second.reset == 1000 + 3600
    assert third.allowed


def test_rate_limit_block_sets_reset():
    now = [1000.0]
    limit = RateLimit(3600, clock=lambda: now[0])
    limit.block(2.0)

    blocked = limit.consume()
    now[0] += 2.0
    after = limit.consume()

    assert not blocked.allowed
    assert blocked.reset == 1002
    assert blocked.remaining == 0
    assert after.allowed
    assert after.remaining == 3599


def test_request_ledger_counts_since_mark():
    ledger = RequestLedger()
    ledger.record("GET", "/volumes/{id}", 200)
    mark = ledger.mark()
    ledger.record("GET", "/volumes/{id}", 200)
    ledger.record("POST", "/volumes/{id}/actions/attach", 201)

    assert ledger.counts(mark) == {"GET /volumes/{id}": 1, "POST /volumes/{id}/actions/attach": 1}
    assert len(ledger.records()) == 3


def test_event_log_callbacks_and_since():
    log = EventLog()
    seen: list[dict[str, Any]] = []
    unsubscribe = log.subscribe(seen.append)
    log.record("volume.attached", volume=1, server=2)
    unsubscribe()
    log.record("volume.detached", volume=1, server=2)

    events, last = log.since(1)

    assert [event["kind"] for event in seen] == ["volume.attached"]
    assert [event["kind"] for event in events] == ["volume.detached"]
    assert last == 2
