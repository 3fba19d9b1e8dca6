"""OpenAPI operation names: ``<resource>_<action>``, the names a generated client exposes.

drf-spectacular's default name carries the version prefix and the HTTP verb's DRF action
(``v1_auth_login_create``); an SDK user wants ``auth_login`` and ``orders_cancel``.
"""

import re

from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from drf_spectacular.settings import spectacular_settings
from rest_framework.serializers import ListSerializer

_METHOD_ACTIONS = {"put": "update", "patch": "update", "delete": "delete"}


class AutoSchema(SpectacularAutoSchema):
    """Names every operation from its URL (after ``SCHEMA_PATH_PREFIX``) and its method.

    - the resource is the URL's literal segments, dashes as underscores
      (``/auth/token/refresh`` → ``auth_token_refresh``);
    - a literal segment after a path parameter is an action on that item and names the
      operation alone (``POST /orders/{id}/cancel`` → ``orders_cancel``,
      ``GET /coins/{id}/history`` → ``coins_history``);
    - otherwise GET is ``_list`` or ``_retrieve``, PUT/PATCH ``_update``, DELETE ``_delete``;
      POST is ``_create`` on a URL that also answers GET (a collection), else the URL is
      itself the action (``POST /auth/login`` → ``auth_login``).

    ``@extend_schema(operation_id=...)`` still wins, for the few where this reads badly.
    """

    def get_operation_id(self) -> str:
        # SCHEMA_PATH_PREFIX (/api/vN) lives in the client's base URL, not in its names.
        path = re.sub(f"^{spectacular_settings.SCHEMA_PATH_PREFIX}", "", self.path)
        segments = [s for s in path.split("/") if s]
        literals = [s.replace("-", "_") for s in segments if not s.startswith("{")]
        name = "_".join(literals)
        method = self.method.lower()
        # A parameter somewhere, but the URL ends on a literal: /orders/{id}/cancel.
        acts_on_item = len(literals) < len(segments) and not segments[-1].startswith("{")
        if method in ("get", "post") and acts_on_item:
            return name
        if method == "get":
            return f"{name}_{'list' if self._returns_list() else 'retrieve'}"
        if method == "post":
            return f"{name}_create" if hasattr(self.view, "get") else name
        return f"{name}_{_METHOD_ACTIONS[method]}"

    def _returns_list(self) -> bool:
        # Our list views declare ``responses=Serializer(many=True)`` (see
        # cryptovault/pagination.py); a status-keyed dict is judged by its lowest status.
        responses = self.get_response_serializers()
        if isinstance(responses, dict) and responses:
            responses = responses[min(responses, key=str)]
        return isinstance(responses, ListSerializer)
