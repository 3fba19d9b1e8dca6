"""The API's paginators: DRF's, with a malformed page or cursor a 400 (bad input), not
DRF's 404. A well-formed page past the end is still a 404."""

from rest_framework import pagination
from rest_framework.exceptions import NotFound, ValidationError


class PageNumberPagination(pagination.PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 200

    def get_page_number(self, request, paginator):
        # DRF answers an int for an absent page or "last", else the client's string.
        number = super().get_page_number(request, paginator)
        well_formed = not isinstance(number, str) or (
            number.isascii() and number.isdigit() and int(number) >= 1
        )
        if not well_formed:
            raise ValidationError({self.page_query_param: ["A positive whole number."]})
        return number


class CursorPagination(pagination.CursorPagination):
    """Newest first, stable under concurrent inserts (orders, ledger entries)."""

    ordering = ("-created_at", "-id")
    page_size_query_param = "page_size"
    max_page_size = 200

    def decode_cursor(self, request):
        try:
            return super().decode_cursor(request)
        except NotFound:
            detail = {self.cursor_query_param: [self.invalid_cursor_message]}
            raise ValidationError(detail) from None


def paginated_response(*, view, request, items, serializer_class, **serializer_kwargs):
    """One page of ``items`` in ``view.pagination_class``'s shape.

    List views declare ``pagination_class`` (and ``responses=Serializer(many=True)``):
    drf-spectacular reads it to document the page shape and its query parameters.
    """
    paginator = view.pagination_class()
    page = paginator.paginate_queryset(items, request, view=view)
    data = serializer_class(page, many=True, **serializer_kwargs).data
    return paginator.get_paginated_response(data)
