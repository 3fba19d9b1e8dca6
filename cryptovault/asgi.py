import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cryptovault.settings")

# Django must be set up before anything imports models (consumers, middleware).
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from cryptovault.routing import AllowedHostsOriginValidator, websocket_urlpatterns  # noqa: E402
from markets.asgi import prices_fast_lane  # noqa: E402

application = ProtocolTypeRouter(
    {
        # GET /api/v1/prices is answered before Django's middleware (see markets/asgi.py).
        "http": prices_fast_lane(django_asgi_app),
        "websocket": AllowedHostsOriginValidator(URLRouter(websocket_urlpatterns)),
    }
)
