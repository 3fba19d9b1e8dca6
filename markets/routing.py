from django.urls import path

from markets.consumers import prices_socket

websocket_urlpatterns = [
    # Channels routes ASGI apps with Django's path(), typed for views.
    path("ws/prices", prices_socket),  # type: ignore[arg-type]
]
