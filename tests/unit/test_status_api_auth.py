"""Signatures of the status API's mutating calls."""

from __future__ import annotations

import pytest

from mailcow_ha.agent.apiauth import (
    AUTHORIZATION_HEADER,
    DATE_HEADER,
    NONCE_HEADER,
    NonceCache,
    SignedRequest,
    signed_headers,
    verify_signature,
)

SECRET = b"cluster-secret"
PATH = "/v1/actions/switchover-step-down"
BODY = b'{"target": "node-b"}'
NOW = 1_800_000_000.0


def signed(body: bytes = BODY, path: str = PATH, now: float = NOW, secret: bytes = SECRET) -> SignedRequest:
    headers = signed_headers(secret, "prod", method="POST", path=path, body=body, now=now)
    return SignedRequest("POST", path, headers, body)


def test_valid_signature_accepted():
    result = verify_signature(SECRET, "prod", signed(), now=NOW + 1)

    assert result.ok
    assert len(result.nonce) == 32


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda r: SignedRequest(r.method, r.path, r.headers, b'{"target": "node-c"}'), "invalid signature"),
        (lambda r: SignedRequest(r.method, "/v1/actions/other", r.headers, r.body), "invalid signature"),
        (lambda r: SignedRequest("PUT", r.path, r.headers, r.body), "invalid signature"),
    ],
)
def test_tampered_request_rejected(tamper, reason):
    result = verify_signature(SECRET, "prod", tamper(signed()), now=NOW)

    assert not result.ok
    assert reason in result.reason


def test_wrong_secret_rejected():
    result = verify_signature(SECRET, "prod", signed(secret=b"another-secret"), now=NOW)

    assert not result.ok
    assert "same status_api.secret" in result.reason


def test_other_cluster_rejected():
    result = verify_signature(SECRET, "staging", signed(), now=NOW)

    assert not result.ok


def test_clock_skew_rejected():
    result = verify_signature(SECRET, "prod", signed(now=NOW - 120), now=NOW, max_skew=60)

    assert not result.ok
    assert "+120 s" in result.reason
    assert "NTP" in result.reason


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing"),
        ({AUTHORIZATION_HEADER: "Bearer abc", DATE_HEADER: str(NOW), NONCE_HEADER: "0" * 32}, "must be"),
        ({AUTHORIZATION_HEADER: "MailcowHA-HMAC-SHA256 " + "a" * 64, DATE_HEADER: str(NOW), NONCE_HEADER: "x"}, "hex"),
        (
            {AUTHORIZATION_HEADER: "MailcowHA-HMAC-SHA256 " + "a" * 64, DATE_HEADER: "soon", NONCE_HEADER: "0" * 32},
            "Unix",
        ),
    ],
)
def test_malformed_headers_rejected(headers, reason):
    result = verify_signature(SECRET, "prod", SignedRequest("POST", PATH, headers, BODY), now=NOW)

    assert not result.ok
    assert reason in result.reason


def test_header_names_case_insensitive():
    request = signed()
    lowered = SignedRequest(request.method, request.path, {k.lower(): v for k, v in request.headers.items()}, BODY)

    assert verify_signature(SECRET, "prod", lowered, now=NOW).ok


def test_nonce_cache_rejects_replay():
    cache = NonceCache(max_skew=60)

    assert cache.use("a" * 32, NOW)
    assert not cache.use("a" * 32, NOW + 10)
    assert cache.use("a" * 32, NOW + 121)


def test_nonce_cache_is_bounded():
    cache = NonceCache(max_skew=60, max_entries=3)

    for number in range(10):
        assert cache.use(f"{number:032x}", NOW)

    assert len(cache._seen) <= 3


@pytest.mark.parametrize("sent_at", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_date_rejected(sent_at):
    result = verify_signature(SECRET, "prod", signed(now=sent_at), now=NOW)

    assert not result.ok
    assert result.reason == f"{DATE_HEADER} must be a Unix time in seconds"
