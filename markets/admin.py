from django.contrib import admin, messages

from cryptovault.admin import AuditedAdmin, LargeTablePaginator
from markets.models import Coin, LatestPrice, PricePoint
from markets.services import coin_set_tracked


@admin.register(Coin)
class CoinAdmin(AuditedAdmin):
    list_display = ("id", "symbol", "name", "tracked", "updated_at")
    list_filter = ("tracked",)
    search_fields = ("id", "symbol", "name")
    readonly_fields = ("tracked", "created_at", "updated_at")
    actions = ("track", "untrack")

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
class PricePointAdmin(admin.ModelAdmin):
    list_display = ("coin", "ts", "price")
    list_filter = ("coin",)
    # A year of history is millions of rows: no date_hierarchy (a DISTINCT over all of
    # them), and an estimated count when unfiltered.
    list_select_related = ("coin",)
    show_full_result_count = False
    paginator = LargeTablePaginator

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(LatestPrice)
class LatestPriceAdmin(admin.ModelAdmin):
    """Read-only: written by the poll, read back only to refill an emptied Redis."""

    list_display = ("coin", "price", "as_of", "source")
    list_select_related = ("coin",)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
