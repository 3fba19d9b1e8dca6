"""All WebSocket routes of the platform, gathered from the apps."""

from markets.routing import websocket_urlpatterns as markets_ws
from notifications.routing import websocket_urlpatterns as notifications_ws

websocket_urlpatterns = [*markets_ws, *notifications_ws]
