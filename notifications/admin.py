from django.contrib import admin, messages

from cryptovault.admin import AuditedAdmin, LargeRecordAdmin, LargeTablePaginator, RecordAdmin
from notifications import services
from notifications.models import (
    Notification,
    NotificationPreference,
    OutboxEmail,
    PriceAlert,
    UserEvent,
    UserEventCounter,
)


@admin.register(Notification)
class NotificationAdmin(AuditedAdmin):
    list_display = ("id", "user", "kind", "title", "read_at", "created_at")
    list_filter = ("kind", ("read_at", admin.EmptyFieldListFilter))
    search_fields = ("user__email", "title")
    list_select_related = ("user",)
    # Big table: no date_hierarchy (a DISTINCT over every row), estimated unfiltered count.
    show_full_result_count = False
    paginator = LargeTablePaginator
    readonly_fields = ("user", "kind", "title", "body", "data", "created_at")
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


@admin.register(OutboxEmail)
class OutboxEmailAdmin(AuditedAdmin):
    """Read-only: what waits to be sent, what failed and why. Filter by status for the
    backlog (pending) and the give-ups (failed)."""

    list_display = (
        "id",
        "kind",
        "recipient",
        "status",
        "attempts",
        "next_attempt_at",
        "claimed_until",
        "sent_at",
        "created_at",
    )
    list_filter = ("status", "kind")
    search_fields = ("user__email", "address")
    list_select_related = ("user",)
    show_full_result_count = False
    paginator = LargeTablePaginator
    readonly_fields = (
        "kind",
        "user",
        "address",
        "notification",
        "status",
        "attempts",
        "next_attempt_at",
        "claimed_until",
        "claim",
        "last_error",
        "created_at",
        "sent_at",
    )

    @admin.display(description="to")
    def recipient(self, obj: OutboxEmail) -> str:
        return obj.user.email if obj.user else obj.address

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(UserEvent)
class UserEventAdmin(LargeRecordAdmin):
    list_display = ("id", "user", "event_id", "kind", "created_at")
    list_filter = ("kind",)
    list_select_related = ("user",)
    search_fields = ("user__email",)


@admin.register(UserEventCounter)
class UserEventCounterAdmin(RecordAdmin):
    list_display = ("user", "last_id")
    list_select_related = ("user",)
    search_fields = ("user__email",)
