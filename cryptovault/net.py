"""Client addresses for rate limits and audit.

``X-Forwarded-For`` is honoured only when the direct peer is a trusted proxy
(``TRUSTED_PROXIES``: addresses or CIDR networks); from anyone else the header is
ignored, so a client cannot pick its own rate-limit bucket.
"""

import ipaddress
from functools import lru_cache

from django.conf import settings
from django.http import HttpRequest


@lru_cache(maxsize=8)
def _networks(
    proxies: tuple[str, ...],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(p, strict=False) for p in proxies)


def _is_trusted(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in _networks(tuple(settings.TRUSTED_PROXIES)))


def client_ip_from(*, peer: str, forwarded_for: str) -> str:
    """The client address, given the direct peer and its ``X-Forwarded-For`` header."""
    if not _is_trusted(peer):
        return peer
    # Walk the chain from the nearest hop; the first untrusted address is the client.
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer
    return hops[0] if hops else peer


def client_ip(request: HttpRequest) -> str:
    return client_ip_from(
        peer=request.META.get("REMOTE_ADDR") or "0.0.0.0",  # noqa: S104 - a value, not a bind
        forwarded_for=request.META.get("HTTP_X_FORWARDED_FOR", ""),
    )


def ratelimit_key_ip(group: str, request: HttpRequest) -> str:
    """django-ratelimit key function: the client address as resolved above."""
    return client_ip(request)
