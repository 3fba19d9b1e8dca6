from django.urls import path

from markets.consumers import PricesConsumer

websocket_urlpatterns = [
    path("ws/prices", PricesConsumer.as_asgi()),
]
