"""All WebSocket routes of the platform, gathered from the apps, and their origin check."""

from channels.security.websocket import OriginValidator
from django.conf import settings

from markets.routing import websocket_urlpatterns as markets_ws
from notifications.routing import websocket_urlpatterns as notifications_ws

websocket_urlpatterns = [*markets_ws, *notifications_ws]


class AllowedHostsOriginValidator(OriginValidator):
    """Channels' ``AllowedHostsOriginValidator``, except that a handshake without an
    ``Origin`` header passes.

    Browsers always send ``Origin``, and cross-site WebSocket hijacking needs a
    browser, so a foreign origin is still refused (403). Programs (bots, servers,
    CLI tools) send none and would otherwise be locked out of ``/ws/prices``.
    """

    def __init__(self, application) -> None:
        allowed_hosts = settings.ALLOWED_HOSTS
        if settings.DEBUG and not allowed_hosts:
            allowed_hosts = ["localhost", "127.0.0.1", "[::1]"]
        super().__init__(application, allowed_hosts)

    def valid_origin(self, parsed_origin) -> bool:
        return parsed_origin is None or super().valid_origin(parsed_origin)
