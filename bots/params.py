"""Query parameters as Binance reads them, with Binance's error codes for bad ones: a
missing mandatory parameter is -1102, characters outside the parameter's legal range
-1100, a well-formed value the endpoint cannot take -1130 (limits) or -1120 (interval)."""

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal, overload

import orjson
from django.http import QueryDict

from bots import errors

SYMBOL_RE = re.compile(r"^[A-Z0-9-_.]{1,20}$")
SYMBOL_LEGAL = "^[A-Z0-9-_.]{1,20}$"
SYMBOLS_LEGAL = r'^\[("[A-Z0-9-_.]{1,20}"(,"[A-Z0-9-_.]{1,20}"){0,}){0,1}\]$'
LONG_RE = re.compile(r"^[0-9]{1,20}$")
LONG_LEGAL = "^[0-9]{1,20}$"
INT_MAX = 2**31 - 1
# Epoch ms from the year 3000 on are no time a candle or a trade has; refusing them keeps
# the window arithmetic (a start plus 1000 days) far from datetime's year-9999 end.
MS_MAX = 32503680000000 - 1  # 2999-12-31T23:59:59.999Z


def _value(query: QueryDict, name: str) -> str | None:
    value = query.get(name)
    return None if value is None or value == "" else value


@overload
def symbol_param(query: QueryDict, *, required: Literal[True]) -> str: ...
@overload
def symbol_param(query: QueryDict, *, required: bool) -> str | None: ...
def symbol_param(query: QueryDict, *, required: bool) -> str | None:
    value = _value(query, "symbol")
    if value is None:
        if required:
            raise errors.mandatory_param("symbol")
        return None
    if not SYMBOL_RE.match(value):
        raise errors.illegal_chars("symbol", SYMBOL_LEGAL)
    return value


def symbols_param(query: QueryDict) -> list[str] | None:
    """``symbols=["BTCUSD","ETHUSD"]`` (a JSON array, URL-encoded or not)."""
    value = _value(query, "symbols")
    if value is None:
        return None
    try:
        symbols = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise errors.illegal_chars("symbols", SYMBOLS_LEGAL) from None
    if not isinstance(symbols, list) or not all(
        isinstance(s, str) and SYMBOL_RE.match(s) for s in symbols
    ):
        raise errors.illegal_chars("symbols", SYMBOLS_LEGAL)
    if not symbols:
        raise errors.mandatory_param("symbols")
    if len(set(symbols)) != len(symbols):
        raise errors.BinanceError(
            errors.DUPLICATE_SYMBOLS, "Symbol is present multiple times in the list."
        )
    return symbols


def symbol_or_symbols(query: QueryDict) -> tuple[str | None, list[str] | None]:
    symbol, symbols = symbol_param(query, required=False), symbols_param(query)
    if symbol is not None and symbols is not None:
        raise errors.BinanceError(
            errors.OPTIONAL_PARAMS_BAD_COMBO, "Combination of optional parameters invalid."
        )
    return symbol, symbols


def _matching(query: QueryDict, name: str, pattern: re.Pattern[str], legal: str) -> str | None:
    """The parameter's value, ``None`` when absent; Binance's illegal-characters error
    (quoting ``legal``) when it does not match ``pattern``."""
    value = _value(query, name)
    if value is not None and not pattern.match(value):
        raise errors.illegal_chars(name, legal)
    return value


def int_param(query: QueryDict, name: str, *, default: int, minimum: int, maximum: int) -> int:
    value = _matching(query, name, LONG_RE, LONG_LEGAL)
    if value is None:
        return default
    number = int(value)
    if not minimum <= number <= maximum:
        raise errors.invalid_parameter(name)
    return number


def limit_param(query: QueryDict, *, default: int, maximum: int) -> int:
    """``limit``: how many rows a list answers, 1 to ``maximum``."""
    return int_param(query, "limit", default=default, minimum=1, maximum=maximum)


DECIMAL_RE = re.compile(r"^([0-9]{1,20})(\.[0-9]{1,20})?$")
DECIMAL_LEGAL = r"^([0-9]{1,20})(\.[0-9]{1,20})?$"


def decimal_param(query: QueryDict, name: str) -> Decimal | None:
    """A decimal parameter (``quantity``, ``price``) as Binance spells one."""
    value = _matching(query, name, DECIMAL_RE, DECIMAL_LEGAL)
    return None if value is None else Decimal(value)


def places(value: Decimal) -> int:
    """Decimal places of ``value`` beyond trailing zeros (``1.500`` has 1)."""
    exponent = value.normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def time_param(query: QueryDict, name: str) -> datetime | None:
    """An epoch-milliseconds parameter (``startTime``, ``endTime``) as an aware datetime."""
    value = _matching(query, name, LONG_RE, LONG_LEGAL)
    if value is None:
        return None
    ms = int(value)
    if ms > MS_MAX:
        raise errors.invalid_parameter(name)
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def enum_param(query: QueryDict, name: str, *, choices: tuple[str, ...], default: str) -> str:
    value = _value(query, name)
    if value is None:
        return default
    if value not in choices:
        raise errors.invalid_parameter(name)
    return value
