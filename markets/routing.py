from django.urls import path

from markets.consumers import prices_socket

websocket_urlpatterns = [
    path("ws/prices", prices_socket),
]
