from csp.constants import NONCE, SELF, UNSAFE_INLINE
from csp.decorators import csp_update
from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import (
    SpectacularAPIView,
    SpectacularRedocView,
    SpectacularSwaggerSplitView,
)

from accounts.pages import reset_password_page, verify_email_page
from cryptovault.admin import admin_login
from cryptovault.dashboard import admin_dashboard
from cryptovault.exceptions import handler404 as api_not_found
from cryptovault.health import health
from cryptovault.metrics import metrics_view
from cryptovault.pages import landing

handler400 = "cryptovault.exceptions.handler400"
handler403 = "cryptovault.exceptions.handler403"
handler404 = "cryptovault.exceptions.handler404"
handler500 = "cryptovault.exceptions.handler500"

# What the API docs need beyond the pages' same-origin policy, and nothing else. Swagger
# UI: its page's one inline <style> (by nonce) and the data: icons in its CSS; its init
# script is a file of its own (the split view), so no inline script runs.
swagger_ui = csp_update({"style-src": [SELF, NONCE], "img-src": [SELF, "data:"]})(
    SpectacularSwaggerSplitView.as_view(url_name="schema", template_name="api_docs/swagger_ui.html")
)
# ReDoc: styled-components writes <style> elements at run time (no nonce support in the
# standalone bundle), its search runs in a blob: worker, its icons are data: images.
redoc = csp_update(
    {"style-src": [SELF, UNSAFE_INLINE], "worker-src": ["blob:"], "img-src": [SELF, "data:"]}
)(SpectacularRedocView.as_view(url_name="schema", template_name="api_docs/redoc.html"))

api_v1 = [
    path("auth/", include("accounts.urls")),
    path("", include("markets.urls")),
    path("", include("orders.urls")),
    path("", include("notifications.urls")),
]

urlpatterns = [
    path("", landing, name="landing"),
    path("health", health, name="health"),
    path("metrics", metrics_view, name="metrics"),
    # Where the links in our emails land when APP_URL is the platform itself.
    path("verify-email", verify_email_page, name="verify-email-page"),
    path("reset-password", reset_password_page, name="reset-password-page"),
    path("api/v1/", include((api_v1, "api"), namespace="v1")),
    # Binance's spot REST API (its shapes and errors), not ours: outside the OpenAPI schema.
    path("binance/", include("bots.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", swagger_ui, name="swagger-ui"),
    path("api/redoc/", redoc, name="redoc"),
    path("admin/dashboard/", admin_dashboard, name="admin-dashboard"),
    path("admin/login/", admin_login, name="admin-login"),
    path("admin/", admin.site.urls),
    # JSON 404s for unknown API paths even with DEBUG on (no HTML debug page for clients).
    re_path(r"^api/", api_not_found),
]
