import time

from django_redis import get_redis_connection

# Epoch seconds of the latest successful price poll (written by the poller).
PRICES_AS_OF_KEY = "cv:markets:prices:as_of"


def prices_age_seconds() -> float | None:
    raw = get_redis_connection("default").get(PRICES_AS_OF_KEY)
    if raw is None:
        return None
    return round(max(0.0, time.time() - float(raw)), 3)
