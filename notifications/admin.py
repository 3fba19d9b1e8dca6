from django.contrib import admin, messages

from cryptovault.admin import AuditedAdmin, LargeTablePaginator
from notifications import services
from notifications.models import Notification, NotificationPreference, PriceAlert


@admin.register(Notification)
class NotificationAdmin(AuditedAdmin):
    list_display = ("id", "user", "kind", "title", "read_at", "emailed_at", "created_at")
    list_filter = ("kind", ("read_at", admin.EmptyFieldListFilter))
    search_fields = ("user__email", "title")
    list_select_related = ("user",)
    # Big table: no date_hierarchy (a DISTINCT over every row), estimated unfiltered count.
    show_full_result_count = False
    paginator = LargeTablePaginator
    readonly_fields = ("user", "kind", "title", "body", "data", "emailed_at", "created_at")
    actions = ("mark_read",)

    def has_add_permission(self, request):
        # Notifications come from services (with their push and email), not by hand.
        return False

    @admin.action(description="Mark selected notifications as read")
    def mark_read(self, request, queryset):
        for notification in queryset.filter(read_at__isnull=True):
            services.notification_mark_read(notification=notification)
        self.message_user(request, "Marked as read.", messages.SUCCESS)


@admin.register(PriceAlert)
class PriceAlertAdmin(AuditedAdmin):
    list_display = ("id", "user", "coin", "condition", "price", "active", "triggered_at")
    list_filter = ("active", "condition", "coin")
    search_fields = ("user__email",)
    list_select_related = ("user", "coin")
    readonly_fields = ("user", "coin", "condition", "price", "triggered_at", "triggered_price")

    def has_add_permission(self, request):
        return False


@admin.register(NotificationPreference)
class NotificationPreferenceAdmin(AuditedAdmin):
    list_display = ("user", "email_kinds", "updated_at")
    search_fields = ("user__email",)
    list_select_related = ("user",)
    readonly_fields = ("user",)
