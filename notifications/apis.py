from collections.abc import Callable

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.permissions import authenticated_user
from cryptovault.decimals import PlainDecimalField
from cryptovault.pagination import CursorPagination, paginated_response
from markets.fields import CoinIdField
from notifications import selectors, services
from notifications.models import Notification, PriceAlert
from notifications.serializers import (
    PRICE_FIELD,
    NotificationSerializer,
    PriceAlertSerializer,
)


# A list of the user's rows: its FilterSerializer reads the query (400 on a bad filter),
# its OutputSerializer renders a cursor page. A comment, not a docstring: drf-spectacular
# would publish a docstring as the description of every list that inherits it.
class _FilteredListApi(APIView):
    FilterSerializer: type[serializers.Serializer]
    OutputSerializer: type[serializers.Serializer]
    pagination_class = CursorPagination

    def filtered_page(self, request: Request, select: Callable[..., QuerySet]) -> Response:
        """A page of what ``select`` answers for the user and the query's filters."""
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        items = select(user=authenticated_user(request), **filters.validated_data)
        return paginated_response(
            view=self, request=request, items=items, serializer_class=self.OutputSerializer
        )


class NotificationListApi(_FilteredListApi):
    # What an API key needs here (accounts.authentication.ApiKeyAuthentication).
    api_key_scopes = {"GET": "read"}

    class FilterSerializer(serializers.Serializer):
        class Meta:
            ref_name = "NotificationListFilter"

        unread = serializers.BooleanField(required=False, allow_null=True, default=None)

    OutputSerializer = NotificationSerializer

    @extend_schema(parameters=[FilterSerializer], responses=NotificationSerializer(many=True))
    def get(self, request: Request) -> Response:
        return self.filtered_page(request, selectors.notification_list)


class NotificationUnreadCountApi(APIView):
    api_key_scopes = {"GET": "read"}

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "NotificationUnreadCount"

        count = serializers.IntegerField()

    @extend_schema(responses=OutputSerializer)
    def get(self, request: Request) -> Response:
        count = selectors.notification_unread_count(user=authenticated_user(request))
        return Response(self.OutputSerializer({"count": count}).data)


class NotificationReadApi(APIView):
    OutputSerializer = NotificationSerializer

    @extend_schema(request=None, responses=OutputSerializer)
    def post(self, request: Request, notification_id: int) -> Response:
        notification = selectors.notification_get(
            user=authenticated_user(request), notification_id=notification_id
        )
        notification = services.notification_mark_read(notification=notification)
        return Response(self.OutputSerializer(notification).data)


class NotificationReadAllApi(APIView):
    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "NotificationReadAll"

        updated = serializers.IntegerField()

    @extend_schema(request=None, responses=OutputSerializer)
    def post(self, request: Request) -> Response:
        updated = services.notifications_mark_all_read(user=authenticated_user(request))
        return Response(self.OutputSerializer({"updated": updated}).data)


class NotificationDeleteApi(APIView):
    @extend_schema(responses={204: None})
    def delete(self, request: Request, notification_id: int) -> Response:
        notification = selectors.notification_get(
            user=authenticated_user(request), notification_id=notification_id
        )
        services.notification_delete(notification=notification)
        return Response(status=status.HTTP_204_NO_CONTENT)


class NotificationPreferencesApi(APIView):
    """Which notification kinds are also emailed: ``{"email": {"<kind>": bool, ...}}``."""

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "NotificationPreferencesInput"

        email = serializers.DictField(child=serializers.BooleanField())

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "NotificationPreferences"

        email = serializers.DictField(child=serializers.BooleanField())

    def _render(self, kinds: frozenset[str]) -> Response:
        email = {kind: kind in kinds for kind in Notification.Kind.values}
        return Response(self.OutputSerializer({"email": email}).data)

    @extend_schema(responses=OutputSerializer)
    def get(self, request: Request) -> Response:
        return self._render(services.notification_email_kinds(user=authenticated_user(request)))

    @extend_schema(request=InputSerializer, responses=OutputSerializer)
    def patch(self, request: Request) -> Response:
        payload = self.InputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        kinds = services.notification_preferences_update(
            user=authenticated_user(request), email=payload.validated_data["email"]
        )
        return self._render(kinds)


class PriceAlertListCreateApi(_FilteredListApi):
    api_key_scopes = {"GET": "read", "POST": "trade"}

    class FilterSerializer(serializers.Serializer):
        class Meta:
            ref_name = "PriceAlertListFilter"

        active = serializers.BooleanField(required=False, allow_null=True, default=None)

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "PriceAlertInput"

        coin = CoinIdField()
        condition = serializers.ChoiceField(choices=PriceAlert.Condition.choices)
        price = PlainDecimalField(**PRICE_FIELD)

    OutputSerializer = PriceAlertSerializer

    @extend_schema(parameters=[FilterSerializer], responses=PriceAlertSerializer(many=True))
    def get(self, request: Request) -> Response:
        return self.filtered_page(request, selectors.price_alert_list)

    @extend_schema(request=InputSerializer, responses={201: OutputSerializer})
    def post(self, request: Request) -> Response:
        payload = self.InputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        alert = services.price_alert_create(
            user=authenticated_user(request),
            coin_id=payload.validated_data["coin"],
            condition=payload.validated_data["condition"],
            price=payload.validated_data["price"],
        )
        return Response(self.OutputSerializer(alert).data, status=status.HTTP_201_CREATED)


class PriceAlertDetailApi(APIView):
    api_key_scopes = {"GET": "read", "DELETE": "trade"}

    OutputSerializer = PriceAlertSerializer

    @extend_schema(responses=OutputSerializer)
    def get(self, request: Request, alert_id: int) -> Response:
        alert = selectors.price_alert_get(user=authenticated_user(request), alert_id=alert_id)
        return Response(self.OutputSerializer(alert).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, alert_id: int) -> Response:
        alert = selectors.price_alert_get(user=authenticated_user(request), alert_id=alert_id)
        services.price_alert_delete(alert=alert)
        return Response(status=status.HTTP_204_NO_CONTENT)
