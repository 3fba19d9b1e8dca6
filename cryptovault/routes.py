"""How our apps declare the routes of their API views."""

from django.urls import URLPattern, path
from rest_framework.views import APIView


def api_path(route: str, view: type[APIView], name: str) -> URLPattern:
    """``path(route, view.as_view(), name=name)``: one line a route in the apps' URLConfs,
    which hold nothing but class-based API views."""
    return path(route, view.as_view(), name=name)
