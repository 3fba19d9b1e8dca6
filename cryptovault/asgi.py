import gc
import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cryptovault.settings")

# Django must be set up before anything imports models (consumers, middleware).
django.setup(set_prefix=False)

from django.conf import settings  # noqa: E402

from cryptovault.asgi_handler import PooledThreadsASGIHandler  # noqa: E402

# What get_asgi_application() builds, on long-lived request threads (see asgi_handler).
django_asgi_app = PooledThreadsASGIHandler(threads=settings.WEB_THREADS)

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from cryptovault.routing import (  # noqa: E402
    OriginCheckMiddleware,
    WebSocketOutageMiddleware,
    websocket_urlpatterns,
)
from markets.asgi import public_reads_lane  # noqa: E402
from notifications.streams import streams_lane  # noqa: E402

application = ProtocolTypeRouter(
    {
        # Public market reads are answered from Redis before Django (see markets/asgi.py),
        # and so are the SSE streams (notifications/streams.py).
        "http": streams_lane(public_reads_lane(django_asgi_app)),
        "websocket": WebSocketOutageMiddleware(
            OriginCheckMiddleware(URLRouter(websocket_urlpatterns))
        ),
    }
)

# Everything imported and built so far lives as long as the process. Freezing it keeps
# the cyclic garbage collector from walking it on every full collection, which the
# per-socket objects of a tick's fan-out (markets.consumers) otherwise trigger mid-tick.
gc.freeze()
