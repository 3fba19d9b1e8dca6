from django.contrib import admin, messages

from cryptovault.admin import AuditedAdmin, LargeRecordAdmin, RecordAdmin
from markets.charts import price_charts
from markets.models import Coin, LatestPrice, PricePoint, StatusSample
from markets.services import coin_set_tracked


@admin.register(Coin)
class CoinAdmin(AuditedAdmin):
    list_display = ("id", "symbol", "name", "tracked", "updated_at")
    list_filter = ("tracked",)
    search_fields = ("id", "symbol", "name")
    readonly_fields = ("tracked", "created_at", "updated_at")
    actions = ("track", "untrack")

    def change_view(self, request, object_id, form_url="", extra_context=None):
        coin = self.get_object(request, object_id)
        if coin is not None:
            [(_, chart)] = price_charts([coin])
            extra_context = {**(extra_context or {}), "price_chart": chart}
        return super().change_view(request, object_id, form_url, extra_context)

    def get_readonly_fields(self, request, obj=None):
        # The id is the CoinGecko id: set once on creation, never renamed.
        return (*self.readonly_fields, "id") if obj is not None else self.readonly_fields

    @admin.action(description="Track selected coins (polled from the next run)")
    def track(self, request, queryset):
        for coin in queryset:
            coin_set_tracked(coin=coin, tracked=True)
        self.message_user(request, f"{queryset.count()} coin(s) tracked.", messages.SUCCESS)

    @admin.action(description="Untrack selected coins (dropped from prices at once)")
    def untrack(self, request, queryset):
        for coin in queryset:
            coin_set_tracked(coin=coin, tracked=False)
        self.message_user(request, f"{queryset.count()} coin(s) untracked.", messages.SUCCESS)


@admin.register(PricePoint)
class PricePointAdmin(LargeRecordAdmin):
    list_display = ("coin", "ts", "price")
    list_filter = ("coin",)
    # A year of history is millions of rows: no date_hierarchy (a DISTINCT over all of
    # them), and an estimated count when unfiltered.
    list_select_related = ("coin",)


@admin.register(StatusSample)
class StatusSampleAdmin(RecordAdmin):
    """The minute samples behind the dashboard's queue and price-age charts, read-only:
    the sampler writes them."""

    list_display = (
        "ts",
        "price_age_seconds",
        "price_source",
        "price_stale",
        "queue_waiting",
        "queue_unacked",
    )
    list_filter = ("price_stale", "price_source")


@admin.register(LatestPrice)
class LatestPriceAdmin(RecordAdmin):
    """Read-only: written by the poll, read back only to refill an emptied Redis."""

    list_display = ("coin", "price", "as_of", "source")
    list_select_related = ("coin",)
