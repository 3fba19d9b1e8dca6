"""Binance's request weight: every request spends its endpoint's weight from a per-IP
budget per minute (``REQUEST_WEIGHT``, 6000 a minute as Binance's default); every
response reports the IP's use in ``X-MBX-USED-WEIGHT-1M``. Over the budget → 429 with
-1003 and ``Retry-After`` (Binance's IP ban, 418, is not played).

One Redis counter per IP and minute (fixed windows, like Binance's), incremented and
given its expiry in one round trip.
"""

import math
import time

from django.conf import settings
from django_redis import get_redis_connection

from bots.errors import too_much_weight

WEIGHT_PER_MINUTE = 6000
WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"
_KEY_PREFIX = "cv:bots:weight:"


def weight_spend(*, ip: str, weight: int) -> int:
    """Add ``weight`` to ``ip``'s use this minute and return the total; raises the -1003
    ``BinanceError`` (carrying the total in its headers) when over the budget, unless
    ``RATELIMIT_ENABLE`` is off. A Redis error propagates: without the counter nothing
    is served (the platform's JSON 503)."""
    now = time.time()
    window = int(now // 60)
    key = f"{_KEY_PREFIX}{ip}:{window}"
    pipe = get_redis_connection("default").pipeline(transaction=False)
    pipe.incrby(key, weight)
    pipe.expire(key, 120)
    used, _ = pipe.execute()
    if used > WEIGHT_PER_MINUTE and settings.RATELIMIT_ENABLE:
        error = too_much_weight(
            limit=WEIGHT_PER_MINUTE, retry_after=max(1, math.ceil((window + 1) * 60 - now))
        )
        error.headers[WEIGHT_HEADER] = str(used)
        raise error
    return used
