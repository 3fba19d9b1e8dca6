from django.urls import path

from notifications.consumers import UserConsumer
from notifications.middleware import JWTAuthMiddleware

websocket_urlpatterns = [
    path("ws/user", JWTAuthMiddleware(UserConsumer.as_asgi())),
]
