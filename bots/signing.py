"""Binance's SIGNED endpoint security (rest-api.md "SIGNED Endpoint security", "Timing
security") on the platform's API keys (``accounts.services.api_key_authenticate``).

A signed request carries the key in ``X-MBX-APIKEY`` and, in its query string or form
body, ``timestamp`` (epoch ms, or µs), an optional ``recvWindow`` (ms, default 5000, at
most 60000) and ``signature``: over the query string concatenated without separator to
the body, exactly as sent, without the ``signature`` parameter — hex HMAC-SHA256 with an
HMAC key's secret, base64 Ed25519 with an Ed25519 key (URL-encoded in the request).

Binance's answers: no key → -2014, unknown/revoked/expired key or a disallowed address
or a missing permission → -2015 (HTTP 401), a timestamp outside the window → -1021,
a bad signature → -1022. Replays inside the window are not refused (Binance does not
refuse them); order placement is idempotent through ``newClientOrderId``, which ccxt
always sends.
"""

import re
import time
from decimal import Decimal, InvalidOperation
from urllib.parse import unquote

from django.http import HttpRequest, QueryDict

from accounts.models import ApiKey
from accounts.services import api_key_authenticate, api_key_has_scope
from bots import errors
from cryptovault.exceptions import ApplicationError
from cryptovault.net import client_ip

RECV_WINDOW_DEFAULT_MS = Decimal(5000)
RECV_WINDOW_MAX_MS = Decimal(60000)
# A timestamp may run this far ahead of the server's clock.
AHEAD_MS = 1000
# Timestamps of 16 digits and more are microseconds (Binance accepts both).
MICROS_FROM = 10**15
RECV_WINDOW_RE = re.compile(r"^[0-9]{1,20}(\.[0-9]{1,3})?$")
RECV_WINDOW_LEGAL = r"^[0-9]{1,20}(\.[0-9]{1,3})?$"
TIMESTAMP_RE = re.compile(r"^[0-9]{1,20}$")
TIMESTAMP_LEGAL = "^[0-9]{1,20}$"


def signed_params(request: HttpRequest) -> QueryDict:
    """The request's parameters, query string and form body together (Binance reads
    both for every method); a parameter sent twice is -1101."""
    params = QueryDict(mutable=True)
    body = request.body.decode("utf-8", errors="replace") if request.body else ""
    for source in (request.GET, QueryDict(body)):
        for name, values in source.lists():
            if name in params or len(values) > 1:
                raise errors.BinanceError(
                    errors.TOO_MANY_PARAMETERS, "Duplicate values for a parameter detected."
                )
            params.setlist(name, values)
    return params


def signature_payload(request: HttpRequest) -> bytes:
    """totalParams as sent: the query string, then the body, each without its
    ``signature`` parameter."""
    parts = []
    for raw in (request.META.get("QUERY_STRING", "").encode("latin-1"), request.body):
        kept = [p for p in raw.split(b"&") if p and not p.startswith(b"signature=")]
        parts.append(b"&".join(kept))
    return b"".join(parts)


def _timestamp_check(params: QueryDict) -> None:
    timestamp = params.get("timestamp") or None
    if timestamp is None:
        raise errors.mandatory_param("timestamp")
    if not TIMESTAMP_RE.match(timestamp):
        raise errors.illegal_chars("timestamp", TIMESTAMP_LEGAL)
    raw_window = params.get("recvWindow") or None
    window = RECV_WINDOW_DEFAULT_MS
    if raw_window is not None:
        if not RECV_WINDOW_RE.match(raw_window):
            raise errors.illegal_chars("recvWindow", RECV_WINDOW_LEGAL)
        try:
            window = Decimal(raw_window)
        except InvalidOperation:  # pragma: no cover - the pattern admits only numbers
            raise errors.illegal_chars("recvWindow", RECV_WINDOW_LEGAL) from None
        if window > RECV_WINDOW_MAX_MS:
            raise errors.BinanceError(
                errors.MANDATORY_PARAM_EMPTY_OR_MALFORMED,
                f"'recvWindow' contains unexpected value. Cannot be greater than "
                f"{RECV_WINDOW_MAX_MS}.",
            )
    sent = Decimal(int(timestamp))
    if sent >= MICROS_FROM:
        sent /= 1000
    now = Decimal(time.time_ns()) / 1_000_000
    if sent >= now + AHEAD_MS:
        raise errors.BinanceError(
            errors.INVALID_TIMESTAMP,
            "Timestamp for this request was 1000ms ahead of the server's time.",
        )
    if now - sent > window:
        raise errors.BinanceError(
            errors.INVALID_TIMESTAMP, "Timestamp for this request is outside of the recvWindow."
        )


def signed_request_authenticate(*, request: HttpRequest, params: QueryDict, scope: str) -> ApiKey:
    """The API key that signed ``request`` and holds ``scope`` (``read`` for
    USER_DATA endpoints, ``trade`` for TRADE ones); raises the Binance error otherwise."""
    key = request.headers.get("X-MBX-APIKEY", "").strip()
    if not key:
        raise errors.BinanceError(errors.BAD_API_KEY_FMT, "API-key format invalid.", status=401)
    _timestamp_check(params)
    signature = params.get("signature") or None
    if signature is None:
        raise errors.mandatory_param("signature")
    # An Ed25519 signature is base64, URL-encoded once by the client; python-binance's
    # form bodies encode it a second time. Base64 has no "%", so decoding is safe.
    for _ in range(2):
        if "%" in signature:
            signature = unquote(signature)
    try:
        api_key = api_key_authenticate(
            key=key,
            message=signature_payload(request),
            signature=signature,
            client_ip=client_ip(request),
        )
    except ApplicationError as exc:
        raise errors.from_application_error(exc) from exc
    if not api_key_has_scope(api_key, scope):
        raise errors.rejected_key()
    return api_key
