"""Binance's error objects (``{"code": -NNNN, "msg": "..."}``, errors.md of Binance's spot
API docs) and the one mapping from the platform's ``ApplicationError`` codes to them.

Binance answers request problems with HTTP 400 and a negative code (-11xx: the request,
-20xx: the matching engine refused), authentication problems with 401, a rate limit with
429 (-1003); its clients (ccxt, python-binance) switch on ``code`` and ``msg``.
"""

from dataclasses import KW_ONLY, dataclass, field

from cryptovault.exceptions import ApplicationError

UNKNOWN = -1000
TOO_MANY_REQUESTS = -1003
INVALID_TIMESTAMP = -1021
INVALID_SIGNATURE = -1022
INVALID_MESSAGE = -1013
TOO_MANY_ORDERS = -1015
UNSUPPORTED_OPERATION = -1020
TOO_MANY_PARAMETERS = -1101
ILLEGAL_CHARS = -1100
MANDATORY_PARAM_EMPTY_OR_MALFORMED = -1102
PARAM_NOT_REQUIRED = -1106
INVALID_TIF = -1115
INVALID_ORDER_TYPE = -1116
INVALID_SIDE = -1117
BAD_INTERVAL = -1120
BAD_SYMBOL = -1121
OPTIONAL_PARAMS_BAD_COMBO = -1128
INVALID_PARAMETER = -1130
INVALID_TICKER_TYPE = -1139
DUPLICATE_SYMBOLS = -1151
NEW_ORDER_REJECTED = -2010
CANCEL_REJECTED = -2011
NO_SUCH_ORDER = -2013
BAD_API_KEY_FMT = -2014
REJECTED_MBX_KEY = -2015

# Binance's messages, word for word, for the codes whose message does not vary.
INSUFFICIENT_BALANCE_MSG = "Account has insufficient balance for requested action."
MARKET_CLOSED_MSG = "Market is closed."
UNKNOWN_ORDER_MSG = "Unknown order sent."
REJECTED_KEY_MSG = "Invalid API-key, IP, or permissions for action."


@dataclass(eq=False)
class BinanceError(Exception):
    """A request the compatible API refuses, rendered as Binance's error object."""

    code: int
    msg: str
    _: KW_ONLY
    status: int = 400
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.msg)

    def body(self) -> dict:
        return {"code": self.code, "msg": self.msg}


def bad_symbol() -> BinanceError:
    return BinanceError(BAD_SYMBOL, "Invalid symbol.")


def mandatory_param(name: str) -> BinanceError:
    return BinanceError(
        MANDATORY_PARAM_EMPTY_OR_MALFORMED,
        f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.",
    )


def illegal_chars(name: str, legal: str) -> BinanceError:
    return BinanceError(
        ILLEGAL_CHARS, f"Illegal characters found in parameter '{name}'; legal range is '{legal}'."
    )


def invalid_parameter(name: str) -> BinanceError:
    return BinanceError(INVALID_PARAMETER, f"Data sent for parameter '{name}' is not valid.")


def param_not_required(name: str) -> BinanceError:
    return BinanceError(PARAM_NOT_REQUIRED, f"Parameter '{name}' sent when not required.")


def filter_failure(name: str) -> BinanceError:
    """An order outside the symbol's filters (exchangeInfo): ``Filter failure: LOT_SIZE``."""
    return BinanceError(INVALID_MESSAGE, f"Filter failure: {name}")


def rejected_key() -> BinanceError:
    """-2015, HTTP 401: an unknown, revoked or expired key, an address outside the key's
    allowlist, or a key without the permission the endpoint needs (Binance says which of
    them no more than this)."""
    return BinanceError(REJECTED_MBX_KEY, REJECTED_KEY_MSG, status=401)


def unsupported() -> BinanceError:
    return BinanceError(UNSUPPORTED_OPERATION, "This operation is not supported.", status=404)


def too_much_weight(*, limit: int, retry_after: int) -> BinanceError:
    return BinanceError(
        TOO_MANY_REQUESTS,
        f"Too much request weight used; current limit is {limit} request weight per 1 MINUTE. "
        "Please use WebSocket Streams for live updates to avoid polling the API.",
        status=429,
        headers={"Retry-After": str(retry_after)},
    )


# ApplicationError.code -> (Binance code, message or None for the platform's own message).
# The order services' codes (orders/services.py, markets/selectors.py, cryptovault/ratelimit.py):
# what the matching engine would say for each, per errors.md "Messages for -2010/-2011".
_APPLICATION_CODES: dict[str, tuple[int, str | None]] = {
    "insufficient_funds": (NEW_ORDER_REJECTED, INSUFFICIENT_BALANCE_MSG),
    "price_stale": (NEW_ORDER_REJECTED, MARKET_CLOSED_MSG),
    "price_unavailable": (NEW_ORDER_REJECTED, MARKET_CLOSED_MSG),
    "unknown_coin": (BAD_SYMBOL, "Invalid symbol."),
    "not_found": (NO_SUCH_ORDER, "Order does not exist."),
    "invalid_api_key": (REJECTED_MBX_KEY, REJECTED_KEY_MSG),
    "ip_not_allowed": (REJECTED_MBX_KEY, REJECTED_KEY_MSG),
    "invalid_signature": (INVALID_SIGNATURE, "Signature for this request is not valid."),
    "order_not_cancellable": (CANCEL_REJECTED, UNKNOWN_ORDER_MSG),
    "invalid": (INVALID_MESSAGE, None),
    "rate_limited": (TOO_MANY_ORDERS, "Too many new orders."),
}


def from_application_error(exc: ApplicationError) -> BinanceError:
    """The Binance error for a platform domain error. Rate limits keep their 429 and
    ``Retry-After``; every other refusal is a 400 as Binance answers them: its 404s are
    for unknown URLs only, and a missing or stale price (the platform's 503) closes the
    market for this order rather than the service. An unmapped code keeps the platform's
    message under -1013."""
    code, msg = _APPLICATION_CODES.get(exc.code, (INVALID_MESSAGE, None))
    status = 429 if exc.status_code == 429 else 401 if code == REJECTED_MBX_KEY else 400
    return BinanceError(code, msg or exc.message, status=status, headers=exc.headers)
