"""Every Redis client that waits in a blocking read has a socket timeout above that wait
(settings: "Redis timeouts"); a shorter one fails the wait while Redis is merely idle."""

from channels.layers import get_channel_layer
from channels_redis.core import RedisChannelLayer
from django.conf import settings

from cryptovault.celery import app


def test_channel_layer_waits_less_than_its_socket_timeout():
    layer = get_channel_layer()
    assert isinstance(layer, RedisChannelLayer)
    for index in range(layer.ring_size):
        options = layer.create_pool(index).connection_kwargs
        assert options["socket_timeout"] > layer.brpop_timeout  # the BZPOPMIN wait
        assert options["socket_connect_timeout"]


def test_celery_broker_waits_less_than_its_socket_timeout():
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        options = channel.client.connection_pool.connection_kwargs
        assert options["socket_timeout"] == settings.REDIS_SOCKET_TIMEOUT
        assert options["socket_timeout"] > channel.brpop_timeout
        assert options["socket_connect_timeout"]
