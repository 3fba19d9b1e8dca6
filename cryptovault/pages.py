"""``/``: what runs here, how fresh the prices are, and where to go next."""

from urllib.parse import urlsplit

from django.conf import settings
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from cryptovault.exceptions import DEPENDENCY_ERRORS
from markets.selectors import prices_age_seconds, prices_snapshot


@never_cache
@require_safe
def landing(request):
    try:
        snapshot = prices_snapshot()
        prices = {
            "source": snapshot["source"],
            "stale": snapshot["stale"],
            "count": len(snapshot["prices"]),
            "age_seconds": prices_age_seconds(),
        }
    except DEPENDENCY_ERRORS:
        # The page is a map of the platform: it still renders, saying Redis is away.
        prices = {"source": None, "stale": True, "count": 0, "age_seconds": None}
        prices["unavailable"] = True
    context = {
        "prices": prices,
        "market_data_host": urlsplit(settings.MARKET_DATA_URL).netloc,
        "fallback": settings.MARKET_DATA_FALLBACK,
        "poll_seconds": settings.PRICE_POLL_SECONDS,
    }
    return render(request, "pages/landing.html", context)
