"""HMAC request signatures for the status API's mutating calls, shared by the server and the client.

A signed request carries three headers: the Unix time it was made, a random nonce, and an
HMAC-SHA256 over the cluster name, method, path, time, nonce and the SHA-256 of the body, keyed
with the cluster secret. The secret itself never crosses the network, a captured request cannot
be replayed (the nonce is remembered for the accepted clock skew), and a request signed for one
cluster or path is useless for another.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass

DATE_HEADER = "X-MailcowHA-Date"
NONCE_HEADER = "X-MailcowHA-Nonce"
AUTHORIZATION_HEADER = "Authorization"
SCHEME = "MailcowHA-HMAC-SHA256"

DEFAULT_MAX_SKEW = 60.0
"""Largest accepted difference in seconds between the caller's clock and ours (nodes run NTP)."""

_NONCE_PATTERN = re.compile(r"^[0-9a-f]{32}$")
_SIGNATURE_PATTERN = re.compile(r"^[0-9a-f]{64}$")


def signing_text(cluster: str, method: str, path: str, *, date: str, nonce: str, body: bytes) -> bytes:
    """Return the bytes a signature covers."""
    body_digest = hashlib.sha256(body).hexdigest()
    return "\n".join([cluster, method.upper(), path, date, nonce, body_digest]).encode("utf-8")


def sign(secret: bytes, text: bytes) -> str:
    return hmac.new(secret, text, hashlib.sha256).hexdigest()


def signed_headers(secret: bytes, cluster: str, *, method: str, path: str, body: bytes, now: float) -> dict[str, str]:
    """Return the headers that authenticate one request made at `now`."""
    date = f"{now:.3f}"
    nonce = secrets.token_hex(16)
    signature = sign(secret, signing_text(cluster, method, path, date=date, nonce=nonce, body=body))
    return {DATE_HEADER: date, NONCE_HEADER: nonce, AUTHORIZATION_HEADER: f"{SCHEME} {signature}"}


@dataclass(frozen=True)
class SignedRequest:
    """The parts of an incoming request that its signature covers."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class AuthResult:
    """Whether a request is authentic, and the reason when it is not (safe to return to the caller)."""

    ok: bool
    reason: str
    nonce: str = ""


def _signature_fields(headers: Mapping[str, str]) -> tuple[str, str, str] | str:
    """Return (signature, date, nonce) from well-formed headers, or the reason they are not."""
    lowered = {name.lower(): value for name, value in headers.items()}
    authorization = lowered.get(AUTHORIZATION_HEADER.lower(), "")
    date = lowered.get(DATE_HEADER.lower(), "")
    nonce = lowered.get(NONCE_HEADER.lower(), "")
    if not authorization or not date or not nonce:
        return f"missing {AUTHORIZATION_HEADER}, {DATE_HEADER} or {NONCE_HEADER} header"
    scheme, _, signature = authorization.partition(" ")
    signature = signature.strip()
    if scheme != SCHEME or not _SIGNATURE_PATTERN.match(signature):
        return f"{AUTHORIZATION_HEADER} must be '{SCHEME} <64 hex digits>'"
    if not _NONCE_PATTERN.match(nonce):
        return f"{NONCE_HEADER} must be 32 lowercase hex digits"
    return signature, date, nonce


def verify_signature(
    secret: bytes, cluster: str, request: SignedRequest, *, now: float, max_skew: float = DEFAULT_MAX_SKEW
) -> AuthResult:
    """Check the signature headers of a request; replay is checked separately by NonceCache.

    The signature is compared in constant time. Header names are matched case-insensitively.
    """
    fields = _signature_fields(request.headers)
    if isinstance(fields, str):
        return AuthResult(False, fields)
    signature, date, nonce = fields

    try:
        sent_at = float(date)
    except ValueError:
        sent_at = math.nan
    # float() also accepts "nan", which would pass the skew check below and never expire.
    if not math.isfinite(sent_at):
        return AuthResult(False, f"{DATE_HEADER} must be a Unix time in seconds")
    if abs(now - sent_at) > max_skew:
        return AuthResult(
            False,
            f"request time differs from this node's clock by {now - sent_at:+.0f} s (max {max_skew:.0f} s); "
            "check NTP on both nodes",
        )

    text = signing_text(cluster, request.method, request.path, date=date, nonce=nonce, body=request.body)
    if not hmac.compare_digest(sign(secret, text), signature):
        return AuthResult(False, "invalid signature; check that both nodes have the same status_api.secret")
    return AuthResult(True, "signature valid", nonce)


class NonceCache:
    """Nonces of accepted requests, kept for twice the clock skew so a captured request cannot be replayed."""

    def __init__(self, max_skew: float = DEFAULT_MAX_SKEW, max_entries: int = 10000) -> None:
        self._keep_for = 2 * max_skew
        self._max_entries = max_entries
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def use(self, nonce: str, now: float) -> bool:
        """Record a nonce; return False when it was used before (a replay)."""
        with self._lock:
            if len(self._seen) >= self._max_entries:
                self._seen = {key: expiry for key, expiry in self._seen.items() if expiry > now}
            if len(self._seen) >= self._max_entries:
                oldest = min(self._seen, key=self._seen.__getitem__)
                del self._seen[oldest]
            if nonce in self._seen and self._seen[nonce] > now:
                return False
            self._seen[nonce] = now + self._keep_for
            return True
